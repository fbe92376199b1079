"""Where the stack's names were imported from before they moved to their own modules.

Kept so that the callers below still import; new code imports from the module named beside
each name, and once the callers do too this module goes.

- ``serving.addresses``: ``free_port``, ``LOOPBACK_HOSTS`` (tests/reliability/test_security.py,
  tests/api/test_drain.py, tests/api/test_gateway_install.py, tests/cli/test_demo.py,
  tests/deploy/test_torchserve_container.py, loadtests/throwaway_postgres.py,
  loadtests/peers/{ray_serve,bentoml_service,litserve_app}.py);
- ``serving.paths``: ``ServingPaths``; ``serving.archives``: ``discover_archives``;
  ``serving.torchserve_config``: ``TorchServeOptions``;
- ``serving.torchserve_process``: ``start_torchserve``, ``register_versions``,
  ``wait_until_answers``, ``stop_torchserve``, ``TORCHSERVE_MAIN_CLASS``;
  ``serving.processes``: ``running_pid`` (tests/reliability/test_faults.py,
  tests/api/test_gateway_integration.py, tests/api/test_aa_e2e.py,
  loadtests/peers/torchserve_hf.py);
- ``serving.gateway_process``: ``gateway_env``, ``start_gateway``
  (tests/reliability/test_faults.py, tests/api/test_experiment_e2e.py).
"""

from __future__ import annotations

from serving.addresses import LOOPBACK_HOSTS, free_port
from serving.archives import discover_archives
from serving.gateway_process import gateway_env, start_gateway
from serving.paths import ServingPaths
from serving.processes import running_pid
from serving.torchserve_config import TorchServeOptions
from serving.torchserve_process import (
    TORCHSERVE_MAIN_CLASS,
    register_versions,
    start_torchserve,
    stop_torchserve,
    wait_until_answers,
)

__all__ = [
    "LOOPBACK_HOSTS",
    "TORCHSERVE_MAIN_CLASS",
    "ServingPaths",
    "TorchServeOptions",
    "discover_archives",
    "free_port",
    "gateway_env",
    "register_versions",
    "running_pid",
    "start_gateway",
    "start_torchserve",
    "stop_torchserve",
    "wait_until_answers",
]
