"""The A/B autopilot end to end: a real TorchServe with real ``.mar`` versions, the gateway as its
own process, the autopilot looking every half second.

- Version 3.0 is a real archive built here to fail: its handler raises on texts carrying a
  marker. With the autopilot on, it is rolled back while users keep getting answers from the
  control.
- Version 2.0 is better by construction (the true ratings are its own answers): the autopilot
  promotes it, and TorchServe's default version (``GET /models/stars`` on the management API)
  becomes 2.0.
"""

from __future__ import annotations

import json
import random
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.live import LiveGateway, running_gateway
from tests.conftest import WORDS

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOKEN = "autopilot-e2e-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MARKER = "zzfailzz"
FAULTY_HANDLER = f'''"""A test archive's handler: fails on texts carrying {MARKER!r}."""

from handlers.star_handler import StarHandler


class FailingStarHandler(StarHandler):
    def preprocess(self, data):
        if any({MARKER!r} in str(row.get("body") or row.get("data")) for row in data):
            raise RuntimeError("this test version fails on marked texts")
        return super().preprocess(data)
'''


def build_failing_archive(model_store: Path, source_version: str, version: str) -> Path:
    """A real ``.mar``: the source version's archive with the failing handler and ``version``."""
    source = model_store / f"stars-{source_version}.mar"
    target = model_store / f"stars-{version}.mar"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename == "star_handler.py":
                data = FAULTY_HANDLER.encode()
            elif item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version
                data = json.dumps(manifest, indent=2).encode()
            new.writestr(item, data)
    return target


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    env = {"STARRATING_ADMIN_TOKEN": TOKEN, "STARRATING_AUTOPILOT_INTERVAL_S": "0.5"}
    root = tmp_path_factory.mktemp("autopilot-e2e")
    with running_gateway(root, env) as live:
        build_failing_archive(live.torchserve.options.model_store, "2.0", "3.0")
        with live.torchserve.sync_client() as torchserve:
            torchserve.register("stars-3.0.mar")
        yield live


def _experiment(name: str, candidate_version: str, min_feedback: int) -> dict[str, Any]:
    return {
        "name": name,
        "variants": [
            {"name": "control", "version": "1.0", "weight": 0.5},
            {"name": "candidate", "version": candidate_version, "weight": 0.5},
        ],
        # The ramp's top is the current share: only rollback or promote can happen here.
        "autopilot": {"mode": "on", "min_feedback": min_feedback, "ramp": [0.5]},
    }


def _wait_for_status(live: LiveGateway, status: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    shown: dict[str, Any] = live.http.get("/v1/experiment").json()
    while shown["status"] != status and time.monotonic() < deadline:
        time.sleep(0.25)
        shown = live.http.get("/v1/experiment").json()
    return shown


def _texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) for _ in range(n)]


def test_a_candidate_that_fails_is_rolled_back_while_users_keep_getting_answers(
    live: LiveGateway,
) -> None:
    put = live.http.put("/v1/experiment", json=_experiment("fails", "3.0", 500), headers=AUTH)
    assert put.status_code == 200, put.text
    rng = random.Random(3)
    statuses: dict[str, list[int]] = {"control": [], "candidate": []}
    # Users come until the autopilot acts (it needs ~100 requests per variant to be sure).
    for i, text in enumerate(_texts(rng, 600)):
        marked = f"{text} {MARKER}" if i % 4 else text  # 3 in 4 texts carry the marker
        answer = live.http.post("/v1/predictions", json={"text": marked, "user_id": f"f{i}"})
        variant = "candidate" if answer.status_code != 200 else answer.json()["variant"]
        statuses[variant].append(answer.status_code)
        if i % 40 == 39 and live.http.get("/v1/experiment").json()["status"] != "running":
            break
    assert set(statuses["control"]) == {200}  # the control answers everything
    assert 503 in statuses["candidate"] and 200 in statuses["candidate"]  # fails marked texts

    shown = _wait_for_status(live, "rolled_back")
    assert shown["status"] == "rolled_back", shown
    assert [v["weight"] for v in shown["variants"]] == [1.0, 0.0]
    rollback = shown["decisions"][-1]
    assert (rollback["action"], rollback["mode"], rollback["applied"]) == ("rollback", "on", True)
    assert rollback["reason"].startswith("guardrail worse than tolerated: error_rate")
    # From now on every user, marked texts too, is answered by the control.
    for i in range(20):
        answer = live.http.post(
            "/v1/predictions", json={"text": f"fine {MARKER}", "user_id": f"f{i}"}
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["variant"], answer.json()["version"]) == ("control", "1.0")
    report = live.http.get("/v1/experiment/report").json()
    assert report["status"] == "rolled_back" and report["decisions"] == shown["decisions"]
    assert live.metric("starrating_ab_autopilot_decisions_total", action="rollback", mode="on") == 1
    assert MARKER not in live.log_file.read_text(encoding="utf-8", errors="replace")


def test_a_better_candidate_is_promoted_and_becomes_torchserves_default(
    live: LiveGateway,
) -> None:
    put = live.http.put("/v1/experiment", json=_experiment("better", "2.0", 60), headers=AUTH)
    assert put.status_code == 200, put.text
    rng = random.Random(5)
    texts = _texts(rng, 240)
    with live.torchserve.sync_client() as torchserve:
        assert torchserve.describe().version == "1.0"
        truth = [
            p.stars for start in range(0, len(texts), 60)
            for p in torchserve.predict(texts[start : start + 60], "2.0")
        ]  # fmt: skip
    for i, (text, stars) in enumerate(zip(texts, truth, strict=True)):
        answer = live.http.post("/v1/predictions", json={"text": text, "user_id": f"b{i}"})
        assert answer.status_code == 200, answer.text
        feedback = {"request_id": answer.json()["request_id"], "stars": stars}
        assert live.http.post("/v1/feedback", json=feedback).status_code == 200
        if i % 40 == 39 and live.http.get("/v1/experiment").json()["status"] == "promoted":
            break

    shown = _wait_for_status(live, "promoted")
    assert shown["status"] == "promoted", shown
    promote = shown["decisions"][-1]
    assert (promote["action"], promote["candidate"], promote["applied"]) == (
        "promote",
        "candidate",
        True,
    )
    assert promote["numbers"]["p_value_holm"] < 0.05
    assert [v["weight"] for v in shown["variants"]] == [0.0, 1.0]
    with live.torchserve.sync_client() as torchserve:
        assert torchserve.describe().version == "2.0"  # GET /models/stars: the default
        assert {v.version for v in torchserve.list_versions()} >= {"1.0", "2.0"}  # kept
    # Requests without an experiment's say now land on 2.0 too.
    answer = live.http.post("/v1/predictions", json={"text": "good", "user_id": "new-user"})
    assert answer.json()["version"] == "2.0"
