"""The A/B testing parts the gateway wires in, opened together and closed together.

``ABTesting.open(settings, client)`` opens the store at ``settings.database_url``, gives the
router the experiment stored there (so weights survive restarts) and builds the recorder. The
app keeps the bundle on ``app.state.ab``; its router is the app's chooser and its recorder the
app's recorder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from api.ab.recorder import ExperimentRecorder
from api.ab.router import ExperimentConfig, ExperimentRouter, check_versions_ready
from api.ab.store import ExperimentStore
from api.settings import Settings
from serving.torchserve import TorchServeClient


@dataclass
class ABTesting:
    store: ExperimentStore
    router: ExperimentRouter
    recorder: ExperimentRecorder

    @classmethod
    def open(
        cls,
        settings: Settings,
        client: TorchServeClient,
        *,
        rng: random.Random | None = None,
    ) -> ABTesting:
        """Open the store and load its experiment (blocking, once at startup)."""
        assert settings.database_url is not None  # Settings fills in the SQLite default
        store = ExperimentStore(settings.database_url)
        router = ExperimentRouter(rng=rng)
        router.reload(store)
        return cls(store, router, ExperimentRecorder(store, router, client))

    async def set_experiment(self, config: ExperimentConfig) -> int:
        """Check the versions are ready, store the config, and route by it; its revision."""
        await check_versions_ready(config, self.recorder.client)
        revision = await self.store.run(
            self.store.save_experiment, config.name, config.model_dump(mode="json")
        )
        self.router.update(config, revision)
        return revision

    async def reload(self) -> None:
        """Pick up a config another replica stored."""
        await self.store.run(self.router.reload, self.store)

    async def aclose(self) -> None:
        await self.recorder.aclose()
        self.store.close()
