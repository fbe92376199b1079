#!/usr/bin/env python3
"""Readiness of TorchServe in the `serve` image: exit 0 when every version of the model has a
READY worker, 1 otherwise (one line on stderr says why).

TorchServe's /ping answers Healthy before any model has loaded, so this asks the management
API (GET /models/<name>/all) instead. With token authorization on it sends the management key
from TorchServe's key_file.json. Standard library only: it runs as Docker's HEALTHCHECK, as the
compose healthcheck and as the Kubernetes readiness probe, once every few seconds.

Environment: STARRATING_MODEL_NAME (default stars), TS_MANAGEMENT_URL (default
http://127.0.0.1:8081), TS_KEY_FILE (default key_file.json in the working directory, where
TorchServe writes it).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def management_key(key_file: Path) -> str | None:
    """The management key from TorchServe's key file, or None when token auth is off."""
    if not key_file.is_file():
        return None
    keys: dict[str, Any] = json.loads(key_file.read_text(encoding="utf-8"))
    return str(keys["management"]["key"])


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
    key = management_key(key_file)
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
    reason = check(
        management_url=os.environ.get("TS_MANAGEMENT_URL", "http://127.0.0.1:8081"),
        model_name=os.environ.get("STARRATING_MODEL_NAME", "stars"),
        key_file=Path(os.environ.get("TS_KEY_FILE", "key_file.json")),
    )
    if reason:
        sys.stderr.write(f"not ready: {reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
