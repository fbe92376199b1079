"""Realistic traffic against a running stack (the gateway): ``make loadtest``.

Each simulated user has a stable user id (so the A/B split keeps them on one variant), reads a
few reviews, mostly one at a time and sometimes as a batch, and on a later turn tells the
service the true rating of some reviews it asked about (``POST /v1/feedback`` with the request
id). Review
texts and their true stars come from the prepared splits named by ``STARRATING_LOADTEST_DATA``
(a ``starrating data prepare`` directory or a ``.jsonl`` file), else from the embedded data set;
``STARRATING_LOADTEST_FEEDBACK_SHARE`` (default 0.3) is the share of answers rated back.

Run by hand::

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:8000 -u 20 -r 5 -t 60s
"""

from __future__ import annotations

import itertools
import math
import os
import random
from functools import cache
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, task

from loadtests.reviews import ReviewSet, load_reviews

DATA_ENV = "STARRATING_LOADTEST_DATA"
# Share of single-review answers the user rates afterwards.
FEEDBACK_SHARE = float(os.environ.get("STARRATING_LOADTEST_FEEDBACK_SHARE", "0.3"))
MAX_BATCH = 16
_user_numbers = itertools.count(1)


@cache
def reviews() -> ReviewSet:
    source = os.environ.get(DATA_ENV)
    return load_reviews(Path(source) if source else None)


def answer_problem(body: Any, expected: int) -> str | None:
    """What is wrong with a prediction answer for ``expected`` texts, or None."""
    if not isinstance(body, dict):
        return "answer is not a JSON object"
    for key in ("request_id", "model", "version", "variant"):
        if not isinstance(body.get(key), str) or not body[key]:
            return f"answer lacks {key!r}"
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != expected:
        return f"expected {expected} predictions"
    for prediction in predictions:
        if not isinstance(prediction, dict) or prediction.get("stars") not in (1, 2, 3, 4, 5):
            return "prediction without stars 1-5"
        probabilities = prediction.get("probabilities")
        if not isinstance(probabilities, dict) or sorted(probabilities) != list("12345"):
            return "probabilities must have keys 1-5"
        if not math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3):
            return "probabilities do not sum to 1"
    return None


class Reviewer(FastHttpUser):  # type: ignore[misc]
    """A user of a shop who rates what they read."""

    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        self.user_id = f"loadtest-{next(_user_numbers)}"
        self.rng = random.Random(self.user_id)
        # (request id, true stars) of answers this user will rate on a later turn, as people
        # do: never in the same instant as the prediction.
        self.to_rate: list[tuple[str, int]] = []

    def _pick(self) -> int:
        return self.rng.randrange(len(reviews()))

    def _predict(self, indices: list[int], name: str) -> str | None:
        """POST the texts at ``indices``; the request id of a good answer, else None."""
        data = reviews()
        body: dict[str, Any] = {"user_id": self.user_id}
        if len(indices) == 1:
            body["text"] = data.texts[indices[0]]
        else:
            body["texts"] = [data.texts[i] for i in indices]
        with self.client.post(
            "/v1/predictions", json=body, name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return None
            try:
                answer = response.json()
            except ValueError:
                response.failure("answer is not JSON")
                return None
            problem = answer_problem(answer, len(indices))
            if problem is not None:
                response.failure(problem)
                return None
            request_id: str = answer["request_id"]
            return request_id

    @task(8)
    def rate_one(self) -> None:
        index = self._pick()
        request_id = self._predict([index], "/v1/predictions [one]")
        if request_id is not None and self.rng.random() < FEEDBACK_SHARE:
            self.to_rate.append((request_id, reviews().stars[index]))

    @task(2)
    def rate_batch(self) -> None:
        size = self.rng.randint(2, MAX_BATCH)
        self._predict([self._pick() for _ in range(size)], "/v1/predictions [batch]")

    @task(3)
    def give_feedback(self) -> None:
        if not self.to_rate:
            return
        request_id, stars = self.to_rate.pop(0)
        with self.client.post(
            "/v1/feedback",
            json={"request_id": request_id, "stars": stars},
            name="/v1/feedback",
            catch_response=True,
        ) as response:
            if not 200 <= response.status_code < 300:
                response.failure(f"status {response.status_code}")
