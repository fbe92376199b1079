"""The A/B testing parts the gateway wires in, opened together and closed together.

``ABTesting.open(database_url, client)`` opens the store at ``database_url``, gives the
router the experiment stored there (so weights survive restarts) and builds the recorder, the
autopilot and the experiment's running assessment (``LiveAssessment``), which the autopilot and
the report share. The app keeps the bundle on ``app.state.ab``; its router is the app's chooser
and its recorder the app's recorder; ``start`` runs the autopilot as a background task of the
lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Collection
from dataclasses import dataclass, field

from abtesting.assignment import ExperimentRouter
from abtesting.autopilot import Autopilot
from abtesting.experiment import ExperimentConfig, check_versions_ready, stale_experiment_reason
from abtesting.live_assessment import LiveAssessment
from abtesting.recorder import ExperimentRecorder
from abtesting.store import DecisionRecord, ExperimentStore
from api.seams import STALE_EXPERIMENT
from serving.torchserve import TorchServeClient, TorchServeError

logger = logging.getLogger(__name__)


@dataclass
class ABTesting:
    store: ExperimentStore
    router: ExperimentRouter
    recorder: ExperimentRecorder
    autopilot: Autopilot
    assessment: LiveAssessment
    """The experiment's running assessment: the autopilot decides on it, the report shows it."""
    _autopilot_task: asyncio.Task[None] | None = field(default=None, init=False)

    @classmethod
    def open(
        cls,
        database_url: str,
        client: TorchServeClient,
        *,
        autopilot_interval_s: float,
        rng: random.Random | None = None,
    ) -> ABTesting:
        """Open the store and load its experiment (blocking, once at startup)."""
        store = ExperimentStore(database_url)
        router = ExperimentRouter(rng=rng)
        router.reload(store)
        assessment = LiveAssessment(store)
        autopilot = Autopilot(
            store, router, client, interval_s=autopilot_interval_s, assessment=assessment
        )
        recorder = ExperimentRecorder(store, router, client)
        return cls(store, router, recorder, autopilot, assessment)

    def start(self) -> None:
        """Run the autopilot in the background (it acts only on experiments that turn it on)."""
        if self._autopilot_task is None:
            self._autopilot_task = asyncio.create_task(self.autopilot.run())

    async def set_experiment(self, config: ExperimentConfig) -> int:
        """Check the versions are ready, store the config, and route by it; its revision."""
        await check_versions_ready(config, self.recorder.client)
        revision = await self.store.run(
            self.store.save_experiment, config.name, config.model_dump(mode="json")
        )
        self.router.update(config, revision)
        return revision

    async def decisions(self, experiment: str) -> list[DecisionRecord]:
        return await self.store.run(self.store.decisions, experiment)

    async def reload(self) -> None:
        """Pick up a config another replica stored."""
        await self.store.run(self.router.reload, self.store)

    async def stale_reason(self, among: Collection[str] | None = None) -> str | None:
        """Why the experiment in force cannot be served: it routes to versions (of ``among``,
        default all) that TorchServe does not have. None when it has them, or without an
        experiment; the client's errors when TorchServe cannot be asked."""
        config = self.router.config
        if config is None:
            return None
        registered = [v.version for v in await self.recorder.client.list_versions()]
        return stale_experiment_reason(config, registered, among)

    async def warn_if_stale(self, timeout_s: float) -> None:
        """At start: log an experiment routing to versions TorchServe does not have, naming the
        experiment, the versions and what to do (``/readyz`` says the same until it is fixed).
        Gives up quietly after ``timeout_s`` or when TorchServe cannot be asked."""
        try:
            async with asyncio.timeout(timeout_s):
                reason = await self.stale_reason()
        except (TorchServeError, TimeoutError) as exc:
            logger.info("the stored experiment's versions could not be checked at start: %r", exc)
            return
        if reason is not None:
            assert self.router.config is not None
            logger.warning(
                "%s",
                reason,
                extra={"fields": {"experiment": self.router.config.name, "code": STALE_EXPERIMENT}},
            )

    async def aclose(self) -> None:
        if self._autopilot_task is not None:
            self._autopilot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._autopilot_task
        await self.recorder.aclose()
        self.store.close()
