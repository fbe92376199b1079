"""The launcher's small helpers: waiting until a process is ready, a free port."""

from __future__ import annotations

import socket
import time

import pytest

from serving.addresses import free_port
from serving.processes import NotReadyError, descendants, wait_until


def test_waiting_ends_once_ready() -> None:
    answers = iter([False, False, True])
    wait_until(lambda: next(answers), timeout_s=5, interval_s=0.01)
    assert next(answers, "done") == "done"


def test_waiting_gives_up_at_once_when_the_process_exited() -> None:
    started = time.monotonic()
    with pytest.raises(NotReadyError, match="it exited") as failed:
        wait_until(lambda: False, timeout_s=30, interval_s=0.01, alive=lambda: False)
    assert failed.value.exited
    assert time.monotonic() - started < 5


def test_waiting_gives_up_after_the_timeout() -> None:
    with pytest.raises(NotReadyError, match="not ready in 0 s") as failed:
        wait_until(lambda: False, timeout_s=0.05, interval_s=0.01, alive=lambda: True)
    assert not failed.value.exited


def test_a_free_port_can_be_bound_on_loopback() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_a_gone_process_has_no_descendants() -> None:
    assert descendants(2**22 + 12345) == []
