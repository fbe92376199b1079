"""Loopback addresses of a local stack: which hosts are loopback, a free port, a URL's host."""

from __future__ import annotations

import socket

from starrating.service import LOOPBACK

LOOPBACK_HOSTS = frozenset({LOOPBACK, "localhost", "::1"})


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def url_host(host: str) -> str:
    """``host`` as it stands in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
