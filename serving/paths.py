"""Where one local serving instance keeps its files, all under ``STARRATING_HOME``::

    torchserve/config.properties   the TorchServe config written at each start
    torchserve/key_file.json       TorchServe's tokens (it writes them to its working directory)
    torchserve/tmp/                TorchServe's TEMP: its pid file, sockets, extracted archives
    logs/torchserve/               TorchServe's logs (ts_log.log, model_log.log, access_log.log,
                                   model_metrics.log, ...) and the launcher's stdout.log
    logs/gateway.log               the gateway's output
    run/torchserve.pid, run/gateway.pid

One TorchServe per home: TorchServe keeps its pid file and sockets in TEMP, so instances with
different homes (and ports) do not collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.torchserve import KEY_FILE_NAME


@dataclass(frozen=True)
class ServingPaths:
    """Where one serving instance keeps its files (see the module docstring)."""

    home: Path

    @classmethod
    def under(cls, home: Path) -> ServingPaths:
        return cls(home.resolve())

    @property
    def torchserve_dir(self) -> Path:
        return self.home / "torchserve"

    @property
    def config_file(self) -> Path:
        return self.torchserve_dir / "config.properties"

    @property
    def key_file(self) -> Path:
        return self.torchserve_dir / KEY_FILE_NAME

    @property
    def temp_dir(self) -> Path:
        return self.torchserve_dir / "tmp"

    @property
    def torchserve_logs(self) -> Path:
        return self.home / "logs" / "torchserve"

    @property
    def gateway_log(self) -> Path:
        return self.home / "logs" / "gateway.log"

    @property
    def torchserve_pid(self) -> Path:
        return self.home / "run" / "torchserve.pid"

    @property
    def gateway_pid(self) -> Path:
        return self.home / "run" / "gateway.pid"

    def make_dirs(self) -> None:
        for directory in (
            self.torchserve_dir,
            self.temp_dir,
            self.torchserve_logs,
            self.gateway_log.parent,
            self.torchserve_pid.parent,
        ):
            directory.mkdir(parents=True, exist_ok=True)
