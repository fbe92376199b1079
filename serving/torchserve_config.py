"""How a local TorchServe is configured, and its ``config.properties`` rendered from that.

The config binds to loopback by default, turns on Prometheus metrics, keeps token authorization
on (``token_auth=False`` is the explicit ``--insecure-dev`` switch), enables the
model-registration API only while the management address is loopback, and allows registering
archives from the model store only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from serving.addresses import LOOPBACK_HOSTS, free_port, url_host
from serving.archives import ArchiveInfo
from serving.sizing import ServingLayout, serving_layout
from starrating.service import (
    DEFAULT_INFERENCE_URL,
    DEFAULT_MANAGEMENT_URL,
    LOOPBACK,
    METRICS_PORT,
    MODEL_NAME,
)


@dataclass(frozen=True)
class TorchServeOptions:
    """How TorchServe is configured: addresses, model store, token authorization."""

    model_store: Path
    inference_url: str = DEFAULT_INFERENCE_URL
    management_url: str = DEFAULT_MANAGEMENT_URL
    metrics_port: int = METRICS_PORT
    # TorchServe 0.12 always starts its gRPC servers too (no switch to turn them off); a second
    # instance on the default ports exits at startup, so each instance needs its own.
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    token_auth: bool = True
    token_expiration_min: int = 60
    model_name: str = MODEL_NAME

    @classmethod
    def on_free_ports(cls, model_store: Path, *, token_auth: bool = True) -> TorchServeOptions:
        """Loopback on free ports (gRPC included): an instance beside any other, for tests
        and benchmarks."""
        return cls(
            model_store=model_store,
            inference_url=f"http://{LOOPBACK}:{free_port()}",
            management_url=f"http://{LOOPBACK}:{free_port()}",
            metrics_port=free_port(),
            grpc_inference_port=free_port(),
            grpc_management_port=free_port(),
            token_auth=token_auth,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{url_host(self._host(self.inference_url))}:{self.metrics_port}"

    @staticmethod
    def _host(url: str) -> str:
        return urlsplit(url).hostname or LOOPBACK

    @property
    def model_api_enabled(self) -> bool:
        """Registering archives over HTTP is allowed only while management is loopback-only."""
        return urlsplit(self.management_url).hostname in LOOPBACK_HOSTS

    def config_properties(
        self, archives: Sequence[ArchiveInfo], layout: ServingLayout | None = None
    ) -> str:
        """The text of TorchServe's ``config.properties`` for ``archives`` sized by ``layout``
        (default: ``serving_layout`` for as many versions on this process's CPUs)."""
        store = self.model_store.resolve()
        if layout is None:
            layout = serving_layout(max(1, len(archives)))
        lines = [
            "# Written by `starrating serve`; rewritten at each start.",
            f"inference_address={self.inference_url}",
            f"management_address={self.management_url}",
            f"metrics_address={self.metrics_url}",
            "metrics_mode=prometheus",
            f"grpc_inference_address={self._host(self.inference_url)}",
            f"grpc_inference_port={self.grpc_inference_port}",
            f"grpc_management_address={self._host(self.management_url)}",
            f"grpc_management_port={self.grpc_management_port}",
            # The handler's own metrics (batch sizes) reach :8082 without a metrics yaml.
            "model_metrics_auto_detect=true",
            f"model_store={store}",
            f"allowed_urls={_store_archive_urls(store)}",
            f"enable_model_api={str(self.model_api_enabled).lower()}",
            f"disable_token_authorization={str(not self.token_auth).lower()}",
            f"token_expiration_min={self.token_expiration_min}",
            # Workers per version from the layout (torch threads per worker go to the handler);
            # the archives' model-config.yaml leaves both open.
            f"default_workers_per_model={layout.workers_per_version}",
            # Settings never come from TS_* variables a user happens to have set.
            "enable_envvars_config=false",
            "install_py_dep_per_model=false",
        ]
        if not self.model_api_enabled:
            # No registration API: load every version at startup instead.
            lines.append("load_models=" + ",".join(a.path.name for a in archives))
        return "\n".join(lines) + "\n"


def _store_archive_urls(store: Path) -> str:
    """The regex of the only archive URLs TorchServe may fetch: ``.mar`` files directly in the
    store, by plain file name. TorchServe decodes %2e%2e only after matching, so a looser
    ``STORE/.*`` let ``file://STORE/%2e%2e/x.mar`` load an archive from outside the store.

    Written without backslashes, which Java's Properties.load would drop: metacharacters of the
    path go in brackets; the few without a bracket form Java and Python share match any one
    character but "/".
    """
    literal = {c: f"[{c}]" for c in ".*+?$|(){}"} | {c: "[^/]" for c in "^[]\\"}
    path = "".join(literal.get(c, c) for c in str(store))
    return f"file://{path}/[A-Za-z0-9][A-Za-z0-9._-]*[.]mar"
