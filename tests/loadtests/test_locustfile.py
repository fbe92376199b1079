"""`loadtests/locustfile.py` (what `make loadtest` runs) against a real stack, tiny model."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.stack import StackTuning, archive_for_bench, running_stack

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_locustfile_drives_predictions_batches_and_feedback_without_failures(
    tiny_model_dir: Path, tiny_data_dir: Path, tmp_path: Path
) -> None:
    mar = archive_for_bench(tiny_model_dir, tmp_path)
    prefix = tmp_path / "locust"
    with running_stack(mar, tmp_path / "stack", StackTuning()) as stack:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(REPO / "loadtests" / "locustfile.py"),
                "--headless",
                "--host",
                stack.gateway_url,
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--run-time",
                # Batches are 2 of 10 task picks: 6 s on a loaded machine once saw none.
                "15s",
                "--only-summary",
                "--csv",
                str(prefix),
            ],
            env=os.environ
            | {
                "STARRATING_LOADTEST_DATA": str(tiny_data_dir),
                # Every single-review answer is rated back, so feedback certainly happens.
                "STARRATING_LOADTEST_FEEDBACK_SHARE": "1.0",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    for name in ("/v1/predictions [one]", "/v1/predictions [batch]", "/v1/feedback"):
        assert int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name
    assert int(rows["Aggregated"]["Failure Count"]) == 0
