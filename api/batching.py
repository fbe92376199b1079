"""Adaptive batching in the gateway: concurrent predictions for the same version become one
TorchServe request.

Most clients send one review per request, and each HTTP request costs TorchServe milliseconds
of CPU outside the model; a request of many texts costs about the same. So, per version:

- a prediction is sent at once while fewer than ``max_in_flight`` requests to that version are
  in flight (an idle gateway adds no wait);
- otherwise it waits, and everything that waits is sent together as soon as a request to that
  version comes back, when ``max_texts`` texts are waiting, or after ``max_wait_s`` at most.

Like BentoML's dispatcher, the number of batches in flight is bounded (its outbound semaphore);
like Triton's dynamic batcher, a batch is released when the model can take it, with a bound on
how long a request may be held back. Neither estimates a batch's cost here: the in-flight
request's return is the signal that the model is free.

Each caller gets exactly its own answers, in order. An error the upstream gives for the whole
request (version unknown, TorchServe down) reaches every caller in it; an invalid-input answer
to a request of several callers is retried caller by caller, so it reaches only the caller whose
texts caused it. A caller whose deadline passes gets its timeout; the others are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from api import metrics
from serving.torchserve import (
    BadUpstreamResponse,
    InvalidInput,
    Prediction,
    UpstreamTimeout,
)


class Predictor(Protocol):
    """Whatever answers predictions for a version: the TorchServe client, or the batcher."""

    async def predict(self, texts: Sequence[str], version: str | None = None) -> list[Prediction]:
        """One prediction per text, in order; ``version`` None is TorchServe's default."""
        ...


@dataclass
class _Waiting:
    texts: Sequence[str]
    answer: asyncio.Future[list[Prediction]]


@dataclass
class _VersionQueue:
    waiting: deque[_Waiting] = field(default_factory=deque)
    waiting_texts: int = 0
    in_flight: int = 0
    timer: asyncio.TimerHandle | None = None


class AdaptiveBatcher:
    """Coalesces concurrent ``predict`` calls per version into upstream requests of ``texts``."""

    def __init__(
        self,
        upstream: Predictor,
        *,
        max_texts: int,
        max_wait_s: float,
        max_in_flight: int,
        timeout_s: float,
    ) -> None:
        self._upstream = upstream
        self._max_texts = max_texts
        self._max_wait_s = max_wait_s
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._queues: dict[str | None, _VersionQueue] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def predict(self, texts: Sequence[str], version: str | None = None) -> list[Prediction]:
        queue = self._queues.setdefault(version, _VersionQueue())
        answer: asyncio.Future[list[Prediction]] = asyncio.get_running_loop().create_future()
        queue.waiting.append(_Waiting(texts, answer))
        queue.waiting_texts += len(texts)
        if queue.in_flight < self._max_in_flight or queue.waiting_texts >= self._max_texts:
            self._release(version, queue)
        elif queue.timer is None:
            queue.timer = asyncio.get_running_loop().call_later(
                self._max_wait_s, self._release, version, queue
            )
        try:
            # shield: a caller that gives up (deadline, disconnect) leaves the batch alone.
            return await asyncio.wait_for(asyncio.shield(answer), self._timeout_s)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"no answer from TorchServe within {self._timeout_s:g} s", version
            ) from exc

    async def aclose(self) -> None:
        """Wait for the requests already sent (at shutdown)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _release(self, version: str | None, queue: _VersionQueue) -> None:
        """Send what waits for ``version`` as requests of at most ``max_texts`` texts (a caller
        with more texts than that goes alone; callers are never split)."""
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        while queue.waiting:
            batch: list[_Waiting] = []
            count = 0
            while queue.waiting and (
                not batch or count + len(queue.waiting[0].texts) <= self._max_texts
            ):
                item = queue.waiting.popleft()
                batch.append(item)
                count += len(item.texts)
            queue.waiting_texts -= count
            queue.in_flight += 1
            task = asyncio.create_task(self._send(version, queue, batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, version: str | None, queue: _VersionQueue, batch: list[_Waiting]) -> None:
        try:
            await self._answer(version, batch)
        finally:
            queue.in_flight -= 1
            if queue.waiting:
                self._release(version, queue)
            elif queue.in_flight == 0 and self._queues.get(version) is queue:
                # Forget idle versions: clients can name any version (X-Model-Version).
                del self._queues[version]

    async def _answer(self, version: str | None, batch: list[_Waiting]) -> None:
        texts = [text for item in batch for text in item.texts]
        metrics.UPSTREAM_REQUEST_TEXTS.observe(len(texts))
        try:
            predictions = await self._upstream.predict(texts, version)
            if len(predictions) != len(texts):
                raise BadUpstreamResponse(
                    f"TorchServe answered {len(predictions)} predictions for {len(texts)} texts"
                )
        except InvalidInput as exc:
            if len(batch) == 1:
                _raise_into(batch, exc)
                return
            # Whose texts were refused? Ask caller by caller, so only that caller hears it.
            await asyncio.gather(*(self._answer(version, [item]) for item in batch))
            return
        except Exception as exc:  # every caller of this request hears what went wrong
            _raise_into(batch, exc)
            return
        start = 0
        for item in batch:
            end = start + len(item.texts)
            if not item.answer.done():
                item.answer.set_result(predictions[start:end])
            start = end


def _raise_into(batch: Sequence[_Waiting], exc: BaseException) -> None:
    """Hand ``exc`` to every caller of ``batch`` that still waits."""
    for item in batch:
        if not item.answer.done():
            item.answer.set_exception(exc)
    for item in batch:
        # Mark it retrieved for callers that gave up, so asyncio does not log it as lost.
        with contextlib.suppress(BaseException):
            if item.answer.done():
                item.answer.exception()
