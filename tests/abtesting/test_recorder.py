"""ExperimentRecorder: what happens to a prediction after its response was sent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx

from abtesting.assignment import ExperimentAssignment, ExperimentRouter
from abtesting.experiment import ExperimentConfig
from abtesting.recorder import ExperimentRecorder
from abtesting.store import ExperimentStore, PredictionRecord
from api.seams import PredictionEvent
from serving.torchserve import TorchServeClient
from tests.api.conftest import INFERENCE, MANAGEMENT, FakeTorchServe

CONFIG = ExperimentConfig.model_validate(
    {
        "name": "exp",
        "variants": [{"name": "A", "version": "1.0", "weight": 1}],
        "shadow": {"version": "2.0", "sample": 1.0},
    }
)


def _event(request_id: str, user_id: str | None = "alice") -> PredictionEvent:
    return PredictionEvent(
        request_id=request_id,
        assignment=ExperimentAssignment("A", "1.0", "exp", 1),
        version="1.0",
        user_id=user_id,
        stars=(3,),
        probabilities=({"1": 0.1, "2": 0.1, "3": 0.6, "4": 0.1, "5": 0.1},),
        latency_s=0.01,
        texts=("It's OK.",),
    )


def test_feedback_can_wait_for_a_prediction_being_recorded(tmp_path: Path) -> None:
    store = ExperimentStore(f"sqlite:///{tmp_path / 'ab.db'}")
    router = ExperimentRouter(CONFIG.model_copy(update={"shadow": None}), 1)

    async def main() -> None:
        client = TorchServeClient(
            INFERENCE, MANAGEMENT, transport=httpx.MockTransport(FakeTorchServe())
        )
        recorder = ExperimentRecorder(store, router, client)
        recording = asyncio.create_task(recorder.record(_event("r1")))
        await recorder.wait_recorded("r1")  # the feedback route's wait
        assert store.add_feedback("r1", 3).predicted == 3
        await recording
        await recorder.wait_recorded("never-predicted", timeout_s=0.1)  # returns, bounded
        await client.aclose()

    asyncio.run(main())
    stored = store.get_prediction("r1")
    assert stored is not None
    assert stored.user_hash == store.hash_user("alice") and stored.user_hash != "alice"
    store.close()


def test_shadow_copies_beyond_the_bound_are_dropped_not_queued(tmp_path: Path) -> None:
    store = ExperimentStore(f"sqlite:///{tmp_path / 'ab.db'}")
    router = ExperimentRouter(CONFIG, 1)
    fake = FakeTorchServe()
    release = asyncio.Event()
    shadow_calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/2.0"):
            shadow_calls.append(request.url.path)
            await release.wait()
        return await fake(request)

    async def main() -> None:
        client = TorchServeClient(INFERENCE, MANAGEMENT, transport=httpx.MockTransport(handler))
        recorder = ExperimentRecorder(store, router, client, max_shadow_in_flight=2)
        for i in range(5):
            await recorder.record(_event(f"r{i}"))  # returns at once: shadows run on their own
        await asyncio.sleep(0.05)
        assert len(shadow_calls) == 2
        release.set()
        await recorder.aclose()
        await client.aclose()

    asyncio.run(main())
    pairs = store.shadow_pairs("exp")
    assert len(pairs) == 2 and all(p.shadow_stars is not None for p in pairs)
    assert len(store.predictions("exp")) == 5
    store.close()


class CountingStore(ExperimentStore):
    """The real store, counting its write transactions."""

    batches: list[int]

    def add_predictions(self, records: Sequence[PredictionRecord]) -> list[str]:
        self.batches.append(len(records))
        return super().add_predictions(records)


def _record_with(
    store: ExperimentStore, drive: Callable[[ExperimentRecorder], Awaitable[None]]
) -> None:
    """Run ``drive`` against a recorder on ``store`` (no shadow), then finish its writes."""
    router = ExperimentRouter(CONFIG.model_copy(update={"shadow": None}), 1)

    async def main() -> None:
        client = TorchServeClient(
            INFERENCE, MANAGEMENT, transport=httpx.MockTransport(FakeTorchServe())
        )
        recorder = ExperimentRecorder(store, router, client)
        await drive(recorder)
        await recorder.aclose()
        await client.aclose()

    asyncio.run(main())


def test_concurrent_predictions_share_commits_and_all_arrive(tmp_path: Path) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 'ab.db'}")
    store.batches = []

    async def drive(recorder: ExperimentRecorder) -> None:
        await asyncio.gather(*(recorder.record(_event(f"r{i}", f"user-{i}")) for i in range(200)))
        await recorder.record(_event("r0"))  # a client reusing a request id: logged, not raised

    _record_with(store, drive)
    assert len(store.predictions("exp")) == 200
    assert sum(store.batches) == 201
    assert len(store.batches) < 50  # grouped: far fewer commits than predictions
    store.close()


def test_predictions_one_at_a_time_still_share_commits(tmp_path: Path) -> None:
    """At low load (one user, a prediction every few ms) a commit waits briefly for company
    instead of costing one fsync per prediction; each prediction still gets stored."""
    store = CountingStore(f"sqlite:///{tmp_path / 'ab.db'}")
    store.batches = []

    async def drive(recorder: ExperimentRecorder) -> None:
        recordings = []
        for i in range(20):  # what the gateway does: record in the background, answer the next
            recordings.append(asyncio.create_task(recorder.record(_event(f"r{i}", f"u{i}"))))
            await asyncio.sleep(0.005)
        await asyncio.gather(*recordings)

    _record_with(store, drive)
    assert len(store.predictions("exp")) == 20
    assert sum(store.batches) == 20 and len(store.batches) <= 5
    store.close()
