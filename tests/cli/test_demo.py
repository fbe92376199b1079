"""`starrating demo` end to end, as `make demo` runs it, with a tiny encoder instead of MiniLM.

Everything else is the real chain: the embedded data set, two training runs, two `.mar`
archives, TorchServe with token auth, the gateway, the A/B experiment, simulated users with
feedback, the report; then `starrating stop`.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from serving.addresses import free_port
from tests.serving.helpers import starrating

pytestmark = [pytest.mark.slow, pytest.mark.integration]

USERS = 40


def test_demo_trains_archives_serves_and_ab_tests_two_versions(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    gateway_port = free_port()
    env = {
        **os.environ,
        "STARRATING_HOME": str(tmp_path / "home"),
        "STARRATING_TORCHSERVE_URL": f"http://127.0.0.1:{free_port()}",
        "STARRATING_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{free_port()}",
        "STARRATING_PORT": str(gateway_port),
        "STARRATING_DATABASE_URL": f"sqlite:///{tmp_path / 'ab.db'}",
        "COLUMNS": "200",
    }
    env.pop("STARRATING_ADMIN_TOKEN", None)  # the demo generates one and keeps it in HOME
    workdir = tmp_path / "demo"
    demo = starrating(
        "demo", "--workdir", str(workdir), "--model", str(tiny_model_dir),
        "--users", str(USERS), env=env, timeout_s=900,
    )  # fmt: skip
    try:
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output
        for version in ("1.0", "2.0"):
            assert (workdir / "runs" / version / "metrics.json").is_file()
            assert (workdir / "model_store" / f"stars-{version}.mar").is_file()
        assert "verdict:" in output and "/dashboard" in output
        token = (tmp_path / "home" / "admin_token").read_text().strip()
        assert token and token not in output  # the token's location is printed, not the token

        gateway = f"http://127.0.0.1:{gateway_port}"
        report = httpx.get(f"{gateway}/v1/experiment/report", timeout=30).json()
        variants = {v["name"]: v for v in report["variants"]}
        assert set(variants) == {"control", "candidate"}
        assert sum(v["feedback"] for v in variants.values()) == USERS
        assert {v["version"] for v in variants.values()} == {"1.0", "2.0"}
        review = {"text": "I loved it! I will recommend this to everyone.", "user_id": "u-1"}
        answer = httpx.post(f"{gateway}/v1/predictions", json=review, timeout=30)
        assert answer.status_code == 200 and answer.json()["variant"] in variants

        # Run again: the trained runs are reused, not trained a second time.
        again = starrating(
            "demo", "--workdir", str(workdir), "--model", str(tiny_model_dir),
            "--users", "0", env=env,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("reusing the trained run") == 2
    finally:
        stopped = starrating("stop", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway}/healthz", timeout=5)
