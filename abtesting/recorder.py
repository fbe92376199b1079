"""``ExperimentRecorder``: what happens to a prediction after its response has been sent.

Implements ``api.seams.PredictionRecorder``: counts the prediction in the per-variant metrics,
writes it to the store on a worker thread, and, when the router samples the request for the
shadow version, sends a copy of the texts there in its own task. The shadow answer is stored
next to the live one and never reaches the user; at most ``max_shadow_in_flight`` copies run at
once and the rest are dropped, so a slow or broken shadow version costs the live path nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from abtesting import metrics as m
from abtesting.assignment import ExperimentAssignment, ExperimentRouter
from abtesting.experiment import OVERRIDE_VARIANT
from abtesting.store import ExperimentStore, FailureRecord, PredictionRecord
from api.seams import Assignment, PredictionEvent
from serving.torchserve import TorchServeClient, TorchServeError

logger = logging.getLogger(__name__)

RECORD_GRACE_S = 0.2
MAX_BATCH = 500
# A commit waits this long for company: at low load one commit per prediction cost the gateway
# ~0.3 ms of CPU each; a prediction is recorded after its response anyway, and feedback that
# arrives first waits for the write (``wait_recorded``).
RECORD_LINGER_S = 0.05


class ExperimentRecorder:
    """Records predictions of the experiment and sends sampled shadow copies."""

    def __init__(
        self,
        store: ExperimentStore,
        router: ExperimentRouter,
        client: TorchServeClient,
        max_shadow_in_flight: int = 8,
        reload_every_s: float = 5.0,
    ) -> None:
        self.store = store
        self.router = router
        self.client = client
        self._max_shadow = max_shadow_in_flight
        self._shadows: set[asyncio.Task[None]] = set()
        self._failures: set[asyncio.Task[None]] = set()
        self._pending: dict[str, asyncio.Event] = {}
        self._unwritten: list[tuple[PredictionRecord, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._reload_every_s = reload_every_s
        self._reloaded_at = time.monotonic()

    async def record(self, event: PredictionEvent) -> None:
        # Feedback may arrive while this write is still under way: let it wait for it.
        self._pending[event.request_id] = written = asyncio.Event()
        try:
            await self._record(event)
        finally:
            written.set()
            self._pending.pop(event.request_id, None)

    async def wait_recorded(self, request_id: str, timeout_s: float = 2.0) -> None:
        """Wait for a prediction that may still be on its way to the store.

        It is recorded after its response was sent, so a quick client can send feedback first.
        A short grace covers the moment before recording starts (and a replica on the same
        database still writing it); an id being written is waited for, up to ``timeout_s``.
        """
        if request_id not in self._pending:
            await asyncio.sleep(RECORD_GRACE_S)
        written = self._pending.get(request_id)
        if written is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await written.wait()

    async def _record(self, event: PredictionEvent) -> None:
        if time.monotonic() - self._reloaded_at >= self._reload_every_s:
            # Another replica may have changed the experiment: pick it up within seconds.
            self._reloaded_at = time.monotonic()
            await self.store.run(self.router.reload, self.store)
        variant = event.assignment.variant
        m.AB_REQUESTS.labels(variant=variant, version=event.version).inc()
        m.AB_LATENCY.labels(variant=variant).observe(event.latency_s)
        for stars in event.stars:
            m.AB_PREDICTED_STARS.labels(variant=variant, stars=str(stars)).inc()
        assignment = event.assignment
        revision = assignment.revision if isinstance(assignment, ExperimentAssignment) else None
        record = PredictionRecord(
            request_id=event.request_id,
            experiment=assignment.experiment,
            revision=revision,
            variant=variant,
            version=event.version,
            user_hash=self.store.hash_user(event.user_id),
            stars=event.stars,
            probabilities=event.probabilities,
            latency_s=event.latency_s,
            created_at=datetime.now(UTC),
        )
        await self._write(record)
        shadow_version = None
        if revision is not None and assignment.variant != OVERRIDE_VARIANT:
            shadow_version = self.router.wants_shadow()
        if shadow_version is not None:
            self._start_shadow(event, shadow_version)

    def note_failure(
        self,
        request_id: str,
        assignment: Assignment,
        user_id: str | None,
        error: str,
        latency_s: float,
    ) -> None:
        """Count and store (in a task of its own) a request TorchServe failed (error or
        timeout) under its variant: the error rate per variant the autopilot's guardrail
        reads. Only requests the split assigned; never the text."""
        if not isinstance(assignment, ExperimentAssignment) or assignment.revision is None:
            return
        if assignment.variant == OVERRIDE_VARIANT:
            return
        m.AB_FAILED.labels(variant=assignment.variant, error=error).inc()
        record = FailureRecord(
            request_id=request_id,
            experiment=assignment.experiment,
            revision=assignment.revision,
            variant=assignment.variant,
            version=assignment.version,
            user_hash=self.store.hash_user(user_id),
            error=error,
            latency_s=latency_s,
            created_at=datetime.now(UTC),
        )
        task = asyncio.create_task(self._store_failure(record))
        self._failures.add(task)
        task.add_done_callback(self._failures.discard)

    async def _store_failure(self, record: FailureRecord) -> None:
        try:
            await self.store.run(self.store.add_failures, [record])
        except Exception:
            logger.exception("storing failed request %s failed", record.request_id)

    async def _write(self, record: PredictionRecord) -> None:
        written = asyncio.get_running_loop().create_future()
        self._unwritten.append((record, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        await written

    async def _write_batches(self) -> None:
        # Group commit: what arrives while one commit lingers or runs goes into the next, so
        # one fsync stores many predictions, under load and when it is quiet.
        while self._unwritten:
            if len(self._unwritten) < MAX_BATCH:
                await asyncio.sleep(RECORD_LINGER_S)
            batch = self._unwritten[:MAX_BATCH]
            del self._unwritten[:MAX_BATCH]
            try:
                refused = set(
                    await self.store.run(self.store.add_predictions, [r for r, _ in batch])
                )
            except Exception as exc:
                for _, written in batch:
                    written.set_exception(exc)
                continue
            for record, written in batch:
                if record.request_id in refused:
                    logger.warning("request id %s was already recorded", record.request_id)
                written.set_result(None)

    def _start_shadow(self, event: PredictionEvent, version: str) -> None:
        if len(self._shadows) >= self._max_shadow:
            m.AB_SHADOW.labels(version=version, outcome="dropped").inc()
            logger.warning(
                "shadow copy of %s dropped: %d in flight", event.request_id, self._max_shadow
            )
            return
        task = asyncio.create_task(self._shadow(event, version))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, event: PredictionEvent, version: str) -> None:
        started = time.perf_counter()
        stars: tuple[int, ...] | None = None
        error: str | None = None
        try:
            stars = tuple(p.stars for p in await self.client.predict(event.texts, version))
        except TorchServeError as exc:
            error = type(exc).__name__
            logger.warning("shadow copy of %s to %s failed: %s", event.request_id, version, error)
        latency_s = time.perf_counter() - started
        outcome = "error" if stars is None else "agree" if stars == event.stars else "disagree"
        m.AB_SHADOW.labels(version=version, outcome=outcome).inc()
        try:
            await self.store.run(
                self.store.add_shadow, event.request_id, version, stars, latency_s, error
            )
        except Exception:
            logger.exception("storing the shadow answer of %s failed", event.request_id)

    async def aclose(self) -> None:
        """Finish queued writes and shadow copies in flight (bounded by the client's timeout)."""
        if self._writer is not None:
            await self._writer
        if self._shadows or self._failures:
            await asyncio.gather(*self._shadows, *self._failures, return_exceptions=True)
