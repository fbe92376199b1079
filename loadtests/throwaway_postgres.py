"""A throwaway PostgreSQL 15 server: initdb in a temporary directory, a free loopback port, gone
when the block ends. The store's tests and ``loadtests.ab_look`` both start theirs with it.

initdb refuses to run as root, so the server runs as the ``postgres`` user (``runuser``) when
this process is root; it only ever stops the server it started (``pg_ctl -D`` on its own data
directory), never one it did not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from serving.addresses import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_USER = "postgres"


class PostgresMissing(RuntimeError):
    """PostgreSQL 15's server binaries are not installed."""


def available() -> bool:
    return (PG_BIN / "initdb").exists()


@contextmanager
def throwaway_postgres(prefix: str = "starrating-pg-") -> Iterator[str]:
    """Start a fresh server (fsync off: its data dies with it) and yield its SQLAlchemy URL
    (database ``postgres``, user ``postgres``, no password); stop it and delete its files on
    exit."""
    if not available():
        raise PostgresMissing(
            "PostgreSQL 15 is not installed: apt-get install -y postgresql (.ci/run does)"
        )
    root = Path(tempfile.mkdtemp(prefix=prefix))
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    sockets.mkdir()
    log.touch()
    run_as: list[str] = []
    if os.geteuid() == 0:
        root.chmod(0o755)
        for path in (root, log, sockets):
            shutil.chown(path, SYSTEM_USER)
        run_as = ["runuser", "-u", SYSTEM_USER, "--"]
    pg_ctl = [*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        subprocess.run(
            [*run_as, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
        )
        port = free_port()
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -l: the server must not inherit our pipes, or waiting for pg_ctl's output never ends.
        subprocess.run(
            [*pg_ctl, "-l", str(log), "-o", options, "-w", "start"],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(
                [*pg_ctl, "-m", "immediate", "stop"],
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: str, name: str) -> Iterator[str]:
    """A new, empty database ``name`` on the server at ``server`` (a URL as
    ``throwaway_postgres`` yields): its URL; dropped on exit, open connections and all."""
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
