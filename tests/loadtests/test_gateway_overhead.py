"""``python -m loadtests.gateway_overhead``: a real (tiny) run of the fake upstream and the
gateway, and the arguments it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.gateway_overhead import main


@pytest.mark.slow
def test_measures_the_gateway_beside_the_upstream_it_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "overhead.json"
    args = ["--requests", "30", "--upstream-delay-ms", "0", "20", "--json", str(out)]

    assert main(args) == 0

    report = json.loads(out.read_text())
    assert report["command"] == "python -m loadtests.gateway_overhead " + " ".join(args)
    assert report["gateway_source"] == str(Path(__file__).resolve().parents[2])
    assert len(report["load_average_1_5_15"]) == 3
    no_delay, delayed = report["results"]
    assert [r["upstream_delay_ms"] for r in report["results"]] == [0.0, 20.0]
    for result in (no_delay, delayed):
        assert (result["users"], result["requests"]) == (1, 30)
        assert 0 < result["gateway_p50_ms"] <= result["gateway_p95_ms"]
        assert 0 < result["direct_p50_ms"] <= result["direct_p95_ms"]
        assert 0 < result["overhead_p50_ms"] < result["gateway_p50_ms"]
        overhead = result["gateway_p50_ms"] - result["direct_p50_ms"]
        assert result["overhead_p50_ms"] == pytest.approx(overhead)
        assert result["gateway_cpu_ms_per_request"] > 0
    # The fake really answers after its delay, and the gateway waits for it.
    assert delayed["direct_p50_ms"] >= 20 > no_delay["direct_p50_ms"]
    assert delayed["gateway_p50_ms"] > delayed["direct_p50_ms"]
    shown = capsys.readouterr().out
    assert "overhead" in shown and f"results written to {out}\n" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--requests", "0"], "--requests >= --users"),
        (["--users", "0"], "--users must be >= 1"),
        (["--users", "4", "--requests", "3"], "--requests >= --users"),
        (["--requests", "many"], "invalid int value: 'many'"),
        (["--upstream-delay-ms", "-5"], "--upstream-delay-ms must be between 0 and 10000"),
        (["--upstream-delay-ms"], "expected at least one argument"),
    ],
)
def test_refuses_bad_arguments(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_refuses_a_gateway_source_that_is_no_checkout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--gateway-source", str(tmp_path)])
    assert exited.value.code == 2
    assert f"--gateway-source {tmp_path.resolve()} is not a checkout" in capsys.readouterr().err
