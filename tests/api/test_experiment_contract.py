"""The experiment routes keep their OpenAPI contract: schemathesis with every check
(``--checks all``) against a live gateway in front of a real TorchServe (``tests.api.live``).

``PUT /v1/experiment`` is fuzzed with the admin token, so its bodies reach the config model and
the TorchServe check: a body the schema refuses (``"sticky": 0``) must be refused, and a
well-formed experiment naming a version TorchServe does not have is a documented 409 conflict,
not a 422 for a malformed body.

The model checks three rules across fields that JSON Schema cannot say and the schema only
describes in words (variant names unique, the autopilot's ramp increasing, the autopilot with
exactly one candidate). This file is also schemathesis' hooks module: its ``filter_case`` keeps
the schema-valid bodies that break one of them out of the positive cases, and only those.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.api.live import LiveGateway, run_schemathesis, running_gateway, schemathesis_failure

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOKEN = "contract-admin-token-0123"
HOOKS_MODULE = "_schemathesis_hooks"
"""The name schemathesis loads a hooks file under (``SCHEMATHESIS_HOOKS=path/to/file.py``)."""


def breaks_a_rule_the_schema_cannot_say(body: Any) -> bool:
    """Whether an experiment body breaks one of ``ExperimentConfig``'s rules across fields."""
    if not isinstance(body, dict):
        return False
    variants = body.get("variants")
    variants = [v for v in variants if isinstance(v, dict)] if isinstance(variants, list) else []
    names = [v.get("name") for v in variants]
    autopilot = body.get("autopilot")
    autopilot = autopilot if isinstance(autopilot, dict) else {}
    given = autopilot.get("ramp")
    ramp: list[float] = (
        given if isinstance(given, list) and all(isinstance(w, int | float) for w in given) else []
    )
    return (
        len(set(map(str, names))) != len(names)
        or any(not a < b for a, b in pairwise(ramp))
        or (autopilot.get("mode", "off") != "off" and len(variants) != 2)
    )


if __name__ == HOOKS_MODULE:  # loaded by the schemathesis CLI, not by pytest
    import schemathesis

    @schemathesis.hook("filter_case")
    def _only_bodies_the_model_can_accept(context: Any, case: Any) -> bool:
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        return not (positive and breaks_a_rule_the_schema_cannot_say(case.body))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    env = {"STARRATING_ADMIN_TOKEN": TOKEN}
    with running_gateway(tmp_path_factory.mktemp("experiment-contract"), env) as live:
        yield live


def test_schemathesis_every_check_on_the_experiment_routes(stack: LiveGateway) -> None:
    result = run_schemathesis(
        stack.url,
        checks="all",
        seed=4242,
        max_time_s=30,
        include_path_regex="^/v1/experiment",
        headers={"Authorization": f"Bearer {TOKEN}"},
        hooks=Path(__file__),
        timeout_s=180,
    )

    assert result.returncode == 0, schemathesis_failure(result)
    assert "Tested: 3" in result.stdout  # GET and PUT /v1/experiment, GET its report


@pytest.mark.parametrize(
    ("body", "breaks"),
    [
        ({"variants": [{"name": "A"}, {"name": "B"}]}, False),
        ({"variants": [{"name": "A"}, {"name": "A"}]}, True),
        ({"autopilot": {"ramp": [0.1, 0.5]}}, False),
        ({"autopilot": {"ramp": [0.5, 0.5]}}, True),
        ({"variants": [{"name": "A"}], "autopilot": {"mode": "on"}}, True),
        ({"variants": [{"name": "A"}], "autopilot": {"mode": "off"}}, False),
        ({"variants": "A", "autopilot": None}, False),
        ({"autopilot": {"ramp": ["b", 0.1]}}, False),
    ],
)
def test_the_hook_drops_only_bodies_that_break_a_rule(body: Any, breaks: bool) -> None:
    assert breaks_a_rule_the_schema_cannot_say(body) is breaks
