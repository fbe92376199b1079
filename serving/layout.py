"""The serve image's sizing: workers per version and torch threads per worker for a model store.

Installed as ``starrating-serving-layout STORE``: prints ``WORKERS THREADS`` for the model's
versions in ``STORE`` (``serving.archives.discover_archives``, as ``starrating serve`` reads the
store: archives of another model or unreadable ones do not count) served side by side on the
CPUs this container may use (its affinity and cgroup quota: ``docker run --cpus``, a Kubernetes
CPU limit), as ``starrating serve`` sizes a local stack. The image's entry point passes them to
TorchServe (``default_workers_per_model``) and to the handler (``STARRATING_HANDLER_THREADS``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from serving.archives import discover_archives
from serving.sizing import serving_layout
from starrating.cpus import available_cpus
from starrating.service import MODEL_NAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="starrating-serving-layout",
        description="Print 'WORKERS THREADS' for serving every .mar in STORE on this "
        "container's CPUs (affinity and cgroup quota considered).",
    )
    parser.add_argument("store", type=Path, help="The model store TorchServe loads.")
    args = parser.parse_args(argv)
    versions = len(discover_archives(args.store))
    if versions == 0:
        sys.stderr.write(
            f"starrating-serving-layout: no .mar archive of {MODEL_NAME} in {args.store}\n"
        )
        return 1
    layout = serving_layout(versions)
    sys.stdout.write(f"{layout.workers_per_version} {layout.threads_per_worker}\n")
    sys.stderr.write(
        f"starrating-serving-layout: {versions} version(s) on {available_cpus()} CPU(s): "
        f"{layout.workers_per_version} worker(s) x {layout.threads_per_worker} thread(s) each\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
