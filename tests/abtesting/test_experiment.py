"""The experiment: its config checks, sticky stateless assignment, the weighted split, overrides."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from abtesting.assignment import ExperimentAssignment, ExperimentRouter
from abtesting.experiment import (
    OVERRIDE_VARIANT,
    ExperimentConfig,
    ExperimentNotReady,
    check_versions_ready,
)
from abtesting.store import ExperimentStore
from serving.torchserve import TorchServeClient
from tests.api.conftest import INFERENCE, MANAGEMENT, FakeTorchServe

REPO = Path(__file__).resolve().parents[3]


def _config(weights: tuple[float, ...] = (0.7, 0.2, 0.1), **extra: object) -> ExperimentConfig:
    names = "ABCDEFG"
    return ExperimentConfig.model_validate(
        {
            "name": "exp-1",
            "variants": [
                {"name": names[i], "version": f"{i + 1}.0", "weight": w}
                for i, w in enumerate(weights)
            ],
            **extra,
        }
    )


USERS = [f"user-{i}" for i in range(10_000)]


def test_assignment_is_the_same_in_every_router_instance() -> None:
    one, two = ExperimentRouter(_config(), 1), ExperimentRouter(_config(), 1)
    assert [one.choose(u, None).variant for u in USERS[:2000]] == [
        two.choose(u, None).variant for u in USERS[:2000]
    ]


def test_assignment_is_the_same_in_a_fresh_process_with_another_hash_seed() -> None:
    # A restarted replica is a new process; Python's own str hash changes between processes.
    script = (
        "import json, sys; from abtesting.experiment import ExperimentConfig; "
        "from abtesting.assignment import ExperimentRouter; "
        "c = ExperimentConfig.model_validate_json(sys.argv[1]); r = ExperimentRouter(c, 1); "
        "print(json.dumps([r.choose(f'user-{i}', None).variant for i in range(500)]))"
    )
    config = _config()
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script, config.model_dump_json()],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    here = ExperimentRouter(config, 1)
    expected = [here.choose(f"user-{i}", None).variant for i in range(500)]
    assert outputs[0] == outputs[1]
    assert outputs[0].strip() == str(expected).replace("'", '"')


def test_assignment_survives_a_restart_through_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ab.db'}"
    store = ExperimentStore(url)
    config = _config()
    revision = store.save_experiment(config.name, config.model_dump(mode="json"))
    before = ExperimentRouter(config, revision)
    store.close()

    after = ExperimentRouter()
    reopened = ExperimentStore(url)
    assert after.reload(reopened)
    assert after.config == config and after.revision == revision
    assert [after.choose(u, None).variant for u in USERS[:1000]] == [
        before.choose(u, None).variant for u in USERS[:1000]
    ]
    assert not after.reload(reopened)  # nothing newer
    reopened.close()


def test_a_user_keeps_the_variant_on_every_request() -> None:
    router = ExperimentRouter(_config(), 1)
    for user in USERS[:200]:
        assert len({router.choose(user, None).variant for _ in range(5)}) == 1


def test_split_over_10000_users_matches_the_weights_within_binomial_tolerance() -> None:
    weights = {"A": 0.7, "B": 0.2, "C": 0.1}
    router = ExperimentRouter(_config(tuple(weights.values())), 1)
    counts = Counter(router.choose(u, None).variant for u in USERS)
    n = len(USERS)
    for name, p in weights.items():
        # 4.5 standard deviations: a correct split fails this about once in 150,000 runs.
        assert abs(counts[name] - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)), counts


def test_another_experiment_reshuffles_users() -> None:
    first = ExperimentRouter(_config((1, 1)), 1)
    second = ExperimentRouter(_config((1, 1)).model_copy(update={"name": "exp-2"}), 2)
    same = sum(first.choose(u, None).variant == second.choose(u, None).variant for u in USERS)
    assert abs(same / len(USERS) - 0.5) < 0.03


def test_anonymous_requests_are_assigned_per_request() -> None:
    router = ExperimentRouter(_config((0.5, 0.5)), 1, rng=random.Random(7))
    counts = Counter(router.choose(None, None).variant for _ in range(4000))
    assert abs(counts["A"] - 2000) <= 4.5 * math.sqrt(1000)


def test_not_sticky_assigns_a_known_user_per_request() -> None:
    router = ExperimentRouter(_config((0.5, 0.5), sticky=False), 1, rng=random.Random(7))
    assert {router.choose("user-1", None).variant for _ in range(50)} == {"A", "B"}


def test_version_override_is_honoured_and_counted_apart() -> None:
    router = ExperimentRouter(_config(), 3)
    assignment = router.choose("user-1", "9.9")
    assert assignment == ExperimentAssignment(OVERRIDE_VARIANT, "9.9", "exp-1", 3)


def test_zero_weight_variant_gets_no_traffic_and_is_not_required_ready() -> None:
    router = ExperimentRouter(_config((1, 0, 1)), 1)
    assert {router.choose(u, None).variant for u in USERS[:3000]} == {"A", "C"}
    assert list(router.served_versions()) == ["1.0", "3.0"]


def test_without_an_experiment_the_default_version_answers() -> None:
    router = ExperimentRouter()
    assignment = router.choose("user-1", None)
    assert (assignment.variant, assignment.version, assignment.experiment) == (
        "default",
        None,
        None,
    )
    assert list(router.served_versions()) == [None]


def test_changing_weights_moves_only_the_users_it_must() -> None:
    # Growing B from 10% to 20% moves users from A to B, never from B to A.
    router = ExperimentRouter(_config((0.9, 0.1)), 1)
    before = {u: router.choose(u, None).variant for u in USERS}
    router.update(_config((0.8, 0.2)), 2)
    after = {u: router.choose(u, None).variant for u in USERS}
    assert all(after[u] == "B" for u in USERS if before[u] == "B")
    assert sum(v == "B" for v in after.values()) > sum(v == "B" for v in before.values())
    assert router.choose("user-1", None) == ExperimentAssignment(
        after["user-1"], "1.0" if after["user-1"] == "A" else "2.0", "exp-1", 2
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": []}, "at least 1"),
        ({"variants": [{"name": "A", "version": "1.0", "weight": 0}]}, "sum to more than 0"),
        ({"variants": [{"name": "A", "version": "1.0", "weight": -1}]}, "greater than or equal"),
        (
            {"variants": [{"name": "A", "version": "1.0", "weight": 1}] * 2},
            "unique",
        ),
        ({"variants": [{"name": "override", "version": "1.0", "weight": 1}]}, "reserved"),
        ({"variants": [{"name": "A", "version": "../x", "weight": 1}]}, "pattern"),
        ({"shadow": {"version": "2.0", "sample": 1.5}}, "less than or equal"),
        ({"extra": 1}, "Extra inputs"),
        # strict as the schema: no 0/1 or "true" for a boolean, no true or "0.5" for a number
        ({"sticky": 0}, r"sticky\n  Input should be a valid boolean"),
        ({"sticky": "true"}, r"sticky\n  Input should be a valid boolean"),
        (
            {"shadow": {"version": "2.0", "sample": 0.1, "paired": 0}},
            r"shadow.paired\n  Input should be a valid boolean",
        ),
        ({"autopilot": {"ramp": [True]}}, r"autopilot.ramp.0\n  Input should be a valid number"),
        ({"autopilot": {"ramp": ["0.5"]}}, r"autopilot.ramp.0\n  Input should be a valid number"),
        ({"autopilot": {"ramp": [0.0]}}, r"autopilot.ramp.0\n  Input should be greater than 0"),
        ({"autopilot": {"min_feedback": "50"}}, r"min_feedback\n  Input should be a valid int"),
        ({"autopilot": {"min_feedback": 2.5}}, r"min_feedback\n  Input should be a valid int"),
    ],
)
def test_invalid_configs_are_refused(change: dict[str, object], message: str) -> None:
    base = _config().model_dump()
    with pytest.raises(ValidationError, match=message):
        ExperimentConfig.model_validate({**base, **change})


def test_a_whole_float_is_an_integer_as_in_json_schema() -> None:
    body = {**_config().model_dump(), "autopilot": {"min_feedback": 240.0}}
    config = ExperimentConfig.model_validate_json(json.dumps(body))
    assert config.autopilot.min_feedback == 240
    assert isinstance(config.autopilot.min_feedback, int)


def _client(fake: FakeTorchServe) -> TorchServeClient:
    return TorchServeClient(INFERENCE, MANAGEMENT, transport=httpx.MockTransport(fake))


def test_versions_must_be_registered_and_ready() -> None:
    fake = FakeTorchServe(ready={"1.0": True, "2.0": False})

    async def check(config: ExperimentConfig) -> None:
        async with _client(fake) as client:
            await check_versions_ready(config, client)

    asyncio.run(check(_config((1, 0))))  # 2.0 has weight 0: not needed
    with pytest.raises(ExperimentNotReady, match=r"\['2.0'\] have no ready worker"):
        asyncio.run(check(_config((1, 1))))
    with pytest.raises(ExperimentNotReady, match=r"\['3.0'\] are not registered"):
        asyncio.run(check(_config((1, 1, 1))))
    with pytest.raises(ExperimentNotReady, match=r"\['7.0'\] are not registered"):
        asyncio.run(check(_config((1,), shadow={"version": "7.0", "sample": 0.1})))
