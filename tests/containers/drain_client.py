"""Load for the drain tests, run inside a container on the stack's network (as a load balancer
or another service would reach the gateway): from there a stopped listener refuses connections
itself, where the host's published port (Docker's userland proxy) would accept and then drop
them. Prints one JSON summary line. With `retry`, what was never answered (refused, or reset before
any byte of an answer) is sent again, as a retrying client or load balancer does.

    python drain_client.py URL SECONDS CLIENTS retry|no-retry
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

TEXTS = [f"I loved it! I will recommend this to everyone, review number {i}." for i in range(32)]


def main(url: str, seconds: float, clients: int, retry: bool) -> None:
    lock = threading.Lock()
    counts = {"sent": 0, "answered": 0, "refused": 0, "reset": 0}
    lost: list[str] = []
    answered_at: list[float] = []  # wall clock: the test compares it with its own
    start = time.monotonic()

    def client() -> None:
        while time.monotonic() - start < seconds:
            with lock:
                counts["sent"] += 1
            while True:
                try:
                    # A new connection per request: a drained replica must refuse new ones.
                    response = httpx.post(
                        f"{url}/v1/predictions", json={"texts": TEXTS}, timeout=30
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    # Never accepted (refused, the name no longer resolves, or the address is
                    # gone): safe to send again.
                    with lock:
                        counts["refused"] += 1
                    if retry and time.monotonic() - start < seconds + 30:
                        time.sleep(0.05)
                        continue
                    break
                except (httpx.RemoteProtocolError, httpx.ReadError) as error:
                    # Reset before any byte of an answer: a connection that raced the closing
                    # listener (it sat in the kernel's accept backlog and was never handed to
                    # the server). A prediction is safe to send again.
                    with lock:
                        counts["reset"] += 1
                    if retry and time.monotonic() - start < seconds + 30:
                        continue
                    with lock:
                        lost.append(f"{type(error).__name__}: {error}")
                    break
                except httpx.TransportError as error:
                    with lock:
                        lost.append(f"{type(error).__name__}: {error}")
                    break
                with lock:
                    if response.status_code == 200:
                        counts["answered"] += 1
                        answered_at.append(time.time())
                    else:
                        lost.append(f"{response.status_code}: {response.text[:200]}")
                break

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        for future in futures:
            future.result()  # a client that died is a failure of the run, not a quiet gap
    sys.stdout.write(json.dumps({**counts, "lost": lost, "answered_at": answered_at}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "retry")
