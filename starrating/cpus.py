"""How many CPUs this process may really use: the CPU affinity mask and the cgroup CPU quota
(``docker run --cpus``, a Kubernetes CPU limit), not the host's cores.

joblib's ``cpu_count`` (loky's) reads both the affinity and the cgroup v1/v2 quota, rounding a
fractional quota up. The serving side shares these CPUs among workers (``serving.sizing``); a
handler that no launcher told how many threads to take uses them all.
"""

from __future__ import annotations


def available_cpus() -> int:
    """CPUs this process may use: affinity and cgroup quota considered (at least 1)."""
    from joblib import cpu_count

    return max(1, int(cpu_count(only_physical_cores=False)))
