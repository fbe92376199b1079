"""Graceful drain: on SIGTERM, readiness turns false first; uvicorn's own shutdown follows.

uvicorn alone closes its listener within 0.1 s of SIGTERM (``Server.handle_exit`` sets
``should_exit``; the main loop then stops accepting and waits for in-flight requests up to
``--timeout-graceful-shutdown``), so a load balancer that routes by ``/readyz`` never sees the
gateway unready: it learns only from refused connections. ``Drain`` puts ``drain_delay_s`` in
front of that: SIGTERM marks the gateway draining (``/readyz`` answers 503 at once), everything
keeps being answered as before, and after the delay uvicorn's own handler runs, unchanged.

It wraps whatever SIGTERM handler the server installed (uvicorn's ``handle_exit``), so it works
the same under ``uvicorn --factory``, with ``--workers`` (each worker process wraps its own) and
under ``starrating serve``. A second SIGTERM during the delay goes straight to that handler.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger(__name__)

SignalHandler = Callable[[int, FrameType | None], object]


class Drain:
    """Whether this gateway process is draining, and the SIGTERM hook that starts the drain."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.draining = False
        self._server_handler: SignalHandler | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put the drain in front of the server's SIGTERM handler (a no-op without one: a test
        client's thread, or a delay of 0, which leaves uvicorn's behaviour as it is)."""
        if self.delay_s <= 0 or threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if not callable(current):
            return  # SIG_DFL / SIG_IGN: no server of ours handles SIGTERM here
        self._server_handler = current

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            assert self._server_handler is not None
            if self.draining:
                self._server_handler(sig, frame)
                return
            self.draining = True
            logger.info(
                "SIGTERM: draining; /readyz answers 503 and the server shuts down in %gs",
                self.delay_s,
                extra={"fields": {"drain_delay_s": self.delay_s}},
            )
            # Signal handlers run between bytecodes of the loop's thread: schedule, never block.
            loop.call_soon_threadsafe(loop.call_later, self.delay_s, self._shut_down, sig)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _shut_down(self, sig: int) -> None:
        if self._server_handler is not None:
            self._server_handler(sig, None)

    def uninstall(self) -> None:
        """Give SIGTERM back to the server's handler (at lifespan shutdown)."""
        if self._server_handler is not None:
            signal.signal(signal.SIGTERM, self._server_handler)
