"""Names and addresses every part of the service agrees on, defined once.

The archive names files and TorchServe registers models by ``MODEL_NAME`` and a version; the
archive, the gateway and the SageMaker hosting code accept exactly the versions
``VERSION_PATTERN`` allows, so a version the archive writes is one the gateway routes to.
Standard library only: the handler, the gateway and the image healthcheck all import it.
"""

from __future__ import annotations

import re

MODEL_NAME = "stars"
"""The TorchServe model name of every version: ``/predictions/stars/<version>``."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""1-64 URL-safe characters starting with a letter or digit: model names, versions, variants.
They become parts of URL paths and file names."""
VERSION_PATTERN = NAME_PATTERN
"""What a model version may look like (``1.0``, ``2024-11-rc1``)."""
VERSION_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. 1.0)"
"""``VERSION_PATTERN`` in words, for error messages."""
_VERSION = re.compile(VERSION_PATTERN)

ENV_PREFIX = "STARRATING_"
"""Every setting is an environment variable with this prefix."""
HANDLER_ENV_PREFIX = f"{ENV_PREFIX}HANDLER_"
"""The handler's overrides of ``handlers/model-config.yaml`` (TorchServe passes them on)."""

LOOPBACK = "127.0.0.1"
INFERENCE_PORT = 8080
MANAGEMENT_PORT = 8081
METRICS_PORT = 8082
DEFAULT_INFERENCE_URL = f"http://{LOOPBACK}:{INFERENCE_PORT}"
DEFAULT_MANAGEMENT_URL = f"http://{LOOPBACK}:{MANAGEMENT_PORT}"


def is_version(version: str) -> bool:
    """Whether ``version`` is a valid model version."""
    return _VERSION.fullmatch(version) is not None


def archive_file_name(version: str) -> str:
    """The file of a model version in a model store: ``stars-1.0.mar``."""
    return f"{MODEL_NAME}-{version}.mar"
