"""Readiness of TorchServe in the `serve` image: exit 0 when every version of the model has a
READY worker, 1 otherwise (one line on stderr says why). Installed as the command
``starrating-torchserve-healthcheck``.

TorchServe's /ping answers Healthy before any model has loaded, so this asks the management
API (GET /models/<name>/all) instead. With token authorization on it sends the management key
from TorchServe's key_file.json. It runs as Docker's HEALTHCHECK, as the compose healthcheck and
as the Kubernetes readiness probe, once every few seconds, so it stays light: the standard library,
the core settings and the client's key file reader.

Settings, as the gateway reads them: STARRATING_MODEL_NAME, STARRATING_TORCHSERVE_MANAGEMENT_URL,
STARRATING_TORCHSERVE_KEY_FILE (unset: key_file.json in the working directory, where TorchServe
writes it).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from serving.torchserve import KEY_FILE_NAME, TorchServeKeys
from starrating.settings import TorchServeSettings


def unready_versions(description: list[dict[str, Any]]) -> list[str]:
    """Versions in a GET /models/<name>/all answer without a READY worker."""
    return [
        str(version.get("modelVersion", "?"))
        for version in description
        if not any(w.get("status") == "READY" for w in version.get("workers", []))
    ]


def check(management_url: str, model_name: str, key_file: Path, timeout_s: float = 3.0) -> str:
    """Empty string when ready, else the reason it is not."""
    request = urllib.request.Request(f"{management_url.rstrip('/')}/models/{model_name}/all")
    key = TorchServeKeys.read(key_file).management
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            description = json.load(response)
    except urllib.error.HTTPError as exc:
        return f"management API answered {exc.code} for model {model_name!r}"
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return f"management API unreachable at {management_url}: {exc}"
    if not description:
        return f"model {model_name!r} has no version registered"
    waiting = unready_versions(description)
    if waiting:
        return f"model {model_name!r}: no READY worker for version(s) {', '.join(waiting)}"
    return ""


def main() -> int:
    settings = TorchServeSettings()
    reason = check(
        management_url=settings.torchserve_management_url,
        model_name=settings.model_name,
        key_file=settings.torchserve_key_file or Path(KEY_FILE_NAME),
    )
    if reason:
        sys.stderr.write(f"not ready: {reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
