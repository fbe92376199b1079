"""Workers and threads from the CPUs a process may use, not the host's core count."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serving.sizing import ServingLayout, serving_layout


@pytest.mark.parametrize(
    ("cpus", "versions", "layout"),
    [
        (1, 1, ServingLayout(1, 1)),  # serve#3150: a 1-CPU limit gets one worker, not 16
        (2, 1, ServingLayout(2, 1)),  # two workers of one thread before a second thread
        (2, 2, ServingLayout(1, 1)),
        (1, 3, ServingLayout(1, 1)),  # more versions than CPUs: the least that can run
        (4, 1, ServingLayout(2, 2)),
        (5, 1, ServingLayout(2, 2)),
        (6, 1, ServingLayout(2, 3)),
        (16, 2, ServingLayout(2, 4)),
        (12, 1, ServingLayout(3, 4)),
        (64, 1, ServingLayout(16, 4)),
    ],
)
def test_the_cpus_are_shared_among_versions_without_oversubscribing(
    cpus: int, versions: int, layout: ServingLayout
) -> None:
    assert serving_layout(versions, cpus=cpus) == layout
    used = versions * layout.workers_per_version * layout.threads_per_worker
    assert used <= max(cpus, versions)


def test_a_layout_needs_a_version_and_a_cpu() -> None:
    with pytest.raises(ValueError, match="version"):
        serving_layout(0, cpus=2)
    with pytest.raises(ValueError, match="CPU"):
        serving_layout(1, cpus=0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_available_cpus_follows_the_affinity_mask() -> None:
    # `taskset -c 0`, as a cpuset or a CPU-pinned container would restrict the process.
    cpu = min(os.sched_getaffinity(0))
    code = "from serving.sizing import serving_layout; "
    code += "from starrating.cpus import available_cpus; "
    code += "print(available_cpus(), serving_layout(1).threads_per_worker)"
    out = subprocess.run(
        ["taskset", "-c", str(cpu), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1", "1"]
