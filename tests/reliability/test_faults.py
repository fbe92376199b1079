"""Faults under a running stack, each with the behaviour users rely on.

- Every TorchServe worker SIGKILLed during traffic: answers are 200 or a clear 503, TorchServe
  starts new workers, the same gateway serves the same stars again.
- The TorchServe frontend crashing (SIGKILL, workers too) and started again: readiness goes false,
  then true, with no gateway restart.
- A slow or stuck upstream (a fake TorchServe on loopback): the timeout answers 504, at most
  ``max_in_flight`` requests wait for it and the rest get 503 at once, nothing piles up.
- The gateway SIGKILLed while feedback is being written: every acknowledged feedback is there
  after a restart, the database is intact, nothing half-written.
- A full disk under the store: feedback and experiment changes answer 503, predictions go on,
  and once there is room again everything works and nothing is corrupt.

A training run killed and resumed is the training engineer's test
(``tests/training/``: SIGKILL during training, ``--resume``, identical weights).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.addresses import free_port
from serving.archives import discover_archives
from serving.gateway_process import start_gateway
from serving.paths import ServingPaths
from serving.torchserve_process import register_versions, start_torchserve
from tests.reliability.conftest import GatewayStack, clean_environ

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PREDICT = "/v1/predictions"
REVIEW = "Really bad. I hope they don't make this anymore."
UNAVAILABLE = {"model_not_ready", "upstream_unavailable"}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    """Poll until ``condition()`` holds; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


def workers_of(jvm_pid: int) -> list[int]:
    """The live Python worker processes TorchServe runs for its models."""
    workers = []
    for child in psutil.Process(jvm_pid).children(recursive=True):
        try:
            if any("model_service_worker" in part for part in child.cmdline()):
                workers.append(child.pid)
        except psutil.Error:
            continue  # a killed worker not yet reaped
    return workers


def jvm_pid(stack: GatewayStack) -> int:
    return int(stack.paths.torchserve_pid.read_text().split()[0])


def status_of(response: httpx.Response) -> tuple[int, str | None]:
    code = response.json()["error"]["code"] if response.status_code >= 400 else None
    return response.status_code, code


@dataclass
class Traffic:
    """Clients sending predictions in a loop until stopped; every answer is kept."""

    url: str
    answers: list[tuple[float, int, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    clients: list[Future[None]] = field(default_factory=list)

    def run(self, clients: int) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(clients)
        self.clients = [pool.submit(self._client, number) for number in range(clients)]
        return pool

    def raise_if_a_client_died(self) -> None:
        # A client that died on a transport error or a non-JSON 5xx would otherwise just stop
        # adding answers, hiding exactly what the tests forbid.
        for client in self.clients:
            if client.done():
                client.result()

    def finish(self, pool: ThreadPoolExecutor) -> None:
        """Stop the clients, wait for them, and re-raise whatever one of them died of."""
        self.stop.set()
        pool.shutdown()
        for client in self.clients:
            client.result()

    def _client(self, number: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60.0) as http:
            while not self.stop.is_set():
                response = http.post(PREDICT, json={"text": f"{REVIEW} {number}"})
                self.answers.append((time.monotonic(), *status_of(response)))

    def count_after(self, moment: float, status: int) -> int:
        self.raise_if_a_client_died()
        return sum(1 for at, code, _ in self.answers if at > moment and code == status)


def test_workers_killed_during_traffic_are_replaced_and_serving_recovers(
    stack: GatewayStack,
) -> None:
    before = stack.http.post(PREDICT, json={"text": REVIEW}).json()["predictions"]
    killed = set(workers_of(jvm_pid(stack)))  # one or more, as the CPUs allow
    assert killed
    traffic = Traffic(stack.url)
    pool = traffic.run(clients=3)
    try:
        wait_for(lambda: traffic.count_after(0, 200) >= 10, "traffic before the kill")
        killed_at = time.monotonic()
        for worker in killed:
            os.kill(worker, signal.SIGKILL)
        wait_for(
            lambda: len(set(workers_of(jvm_pid(stack))) - killed) >= len(killed),
            "TorchServe's new workers",
        )
        wait_for(lambda: traffic.count_after(killed_at, 200) >= 10, "traffic after the kill")
    finally:
        traffic.finish(pool)

    statuses = {(code, error) for _, code, error in traffic.answers}
    assert statuses <= {(200, None)} | {(503, code) for code in UNAVAILABLE}, statuses
    after = stack.http.post(PREDICT, json={"text": REVIEW}).json()["predictions"]
    assert after == before  # the new worker serves the same model
    assert stack.http.get("/readyz").status_code == 200
    assert stack.alive()


def test_torchserve_crash_and_restart_under_a_running_gateway(stack: GatewayStack) -> None:
    before = stack.http.post(PREDICT, json={"text": REVIEW}).json()["predictions"]
    jvm = psutil.Process(jvm_pid(stack))
    crashed = [jvm, *jvm.children(recursive=True)]
    for process in crashed:
        process.kill()
    psutil.wait_procs(crashed, timeout=30)

    down = {
        "readyz": stack.http.get("/readyz"),
        "predict": stack.http.post(PREDICT, json={"text": REVIEW}),
        "models": stack.http.get("/v1/models"),
    }
    alive_while_down = stack.alive()

    torchserve = stack.torchserve
    archives = discover_archives(torchserve.options.model_store)
    start_torchserve(torchserve.paths, torchserve.options, archives)
    with torchserve.sync_client(timeout=120.0) as client:
        register_versions(client, archives)
    wait_for(lambda: stack.http.get("/readyz").status_code == 200, "readiness after restart")
    after = stack.http.post(PREDICT, json={"text": REVIEW})

    assert {name: r.status_code for name, r in down.items()} == {
        "readyz": 503,
        "predict": 503,
        "models": 503,
    }
    assert down["predict"].json()["error"]["code"] in UNAVAILABLE
    assert alive_while_down
    assert after.status_code == 200
    assert after.json()["predictions"] == before
    assert stack.alive()  # the same gateway process throughout


# -- slow upstream ---------------------------------------------------------------------------


class SlowTorchServe(BaseHTTPRequestHandler):
    """TorchServe's wire format for one ready ``stars`` version, answering predictions late."""

    delay_s: ClassVar[float] = 0.0
    release: ClassVar[threading.Event] = threading.Event()
    lock: ClassVar[threading.Lock] = threading.Lock()
    waiting: ClassVar[int] = 0
    most_waiting: ClassVar[int] = 0
    predictions: ClassVar[int] = 0
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._json(200, {"status": "Healthy"})
        elif self.path.startswith("/models/stars"):
            workers = [{"id": "9000", "status": "READY"}]
            description = {"modelVersion": "1.0", "modelUrl": "stars-1.0.mar", "workers": workers}
            self._json(200, [description])
        else:
            self._json(404, {"code": 404, "message": "not found"})

    def do_POST(self) -> None:
        texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
        cls = type(self)
        with cls.lock:
            cls.waiting += 1
            cls.predictions += 1
            cls.most_waiting = max(cls.most_waiting, cls.waiting)
        try:
            cls.release.wait(cls.delay_s)
        finally:
            with cls.lock:
                cls.waiting -= 1
        probabilities = {"1": 0.1, "2": 0.1, "3": 0.6, "4": 0.1, "5": 0.1}
        answer = {"stars": 3, "probabilities": probabilities, "model_version": "1.0"}
        self._json(200, [answer] * len(texts))

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway gave up waiting, as it should

    def log_message(self, format: str, *args: Any) -> None:
        return None


@dataclass
class SlowStack:
    url: str
    http: httpx.Client
    upstream: type[SlowTorchServe]


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowStack]:
    """The gateway process (timeout 5 s, at most 4 requests in flight) in front of the fake."""
    upstream = SlowTorchServe
    upstream.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake = f"http://127.0.0.1:{server.server_address[1]}"
    paths = ServingPaths.under(tmp_path_factory.mktemp("slow-home"))
    env = {
        **clean_environ(),
        "STARRATING_HOME": str(paths.home),
        "STARRATING_TORCHSERVE_URL": fake,
        "STARRATING_TORCHSERVE_MANAGEMENT_URL": fake,
        "STARRATING_UPSTREAM_TIMEOUT_S": "5",
        "STARRATING_MAX_IN_FLIGHT": "4",
    }
    port = free_port()
    pid = start_gateway(paths, env, host="127.0.0.1", port=port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as http:
            yield SlowStack(f"http://127.0.0.1:{port}", http, upstream)
    finally:
        upstream.release.set()
        psutil.Process(pid).terminate()
        psutil.wait_procs([psutil.Process(pid)], timeout=15)
        server.shutdown()
        server.server_close()


def in_flight(http: httpx.Client) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "starrating_requests_in_flight":
                return sample.value
    raise AssertionError("no in-flight gauge in /metrics")


def test_slow_upstream_times_out_with_504_and_recovers(slow_stack: SlowStack) -> None:
    slow_stack.upstream.delay_s = 30.0
    slow = slow_stack.http.post(PREDICT, json={"text": "ok"})
    slow_stack.upstream.delay_s = 0.0
    fast = slow_stack.http.post(PREDICT, json={"text": "ok"})

    assert status_of(slow) == (504, "upstream_timeout")
    assert fast.status_code == 200
    assert fast.json()["predictions"][0]["stars"] == 3


def test_requests_beyond_the_in_flight_bound_are_refused_at_once(slow_stack: SlowStack) -> None:
    upstream = slow_stack.upstream
    # Answer what earlier tests left waiting, so only this burst is counted.
    upstream.release.set()
    wait_for(lambda: upstream.waiting == 0, "the fake to finish earlier requests")
    upstream.release = threading.Event()
    upstream.delay_s = 30.0
    upstream.most_waiting = 0
    burst = 24

    def one(number: int) -> tuple[int, str | None]:
        with httpx.Client(base_url=slow_stack.url, timeout=60.0) as http:
            return status_of(http.post(PREDICT, json={"text": f"review {number}"}))

    with ThreadPoolExecutor(burst) as pool:
        answers = list(pool.map(one, range(burst)))
    health_during = slow_stack.http.get("/healthz").status_code
    upstream.delay_s = 0.0

    assert set(answers) <= {(504, "upstream_timeout"), (503, "overloaded")}, answers
    assert answers.count((503, "overloaded")) >= burst - 4
    assert 1 <= upstream.most_waiting <= 4
    assert health_during == 200
    assert in_flight(slow_stack.http) == 1  # only the /metrics scrape itself: nothing piled up
    assert slow_stack.http.post(PREDICT, json={"text": "ok"}).status_code == 200


# -- the gateway killed during feedback writes ---------------------------------------------------


def database(stack: GatewayStack) -> Path:
    return stack.paths.home / "db" / "starrating.db"


def restart_gateway(stack: GatewayStack) -> None:
    stack.pid = start_gateway(stack.paths, stack.env, host="127.0.0.1", port=stack.port)


def recorded_predictions(stack: GatewayStack) -> set[str]:
    with sqlite3.connect(f"file:{database(stack)}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT request_id FROM predictions")}


def predictions_for_feedback(stack: GatewayStack, count: int) -> list[tuple[str, int]]:
    """``count`` answered predictions, each with the rating a user will give it."""
    made = []
    for number in range(count):
        response = stack.http.post(
            PREDICT, json={"text": f"review number {number}", "user_id": f"user-{number}"}
        )
        assert response.status_code == 200
        made.append((response.json()["request_id"], number % 5 + 1))
    return made


def test_gateway_sigkilled_during_feedback_keeps_every_acknowledged_write(
    stack: GatewayStack,
) -> None:
    sent = predictions_for_feedback(stack, 60)
    acknowledged: list[tuple[str, int]] = []
    unanswered: list[tuple[str, int]] = []
    lock = threading.Lock()

    def give(chunk: list[tuple[str, int]]) -> None:
        with httpx.Client(base_url=stack.url, timeout=30.0) as http:
            for request_id, stars in chunk:
                try:
                    response = http.post(
                        "/v1/feedback", json={"request_id": request_id, "stars": stars}
                    )
                except httpx.TransportError:
                    with lock:
                        unanswered.append((request_id, stars))
                    continue
                assert response.status_code == 200, response.text
                with lock:
                    acknowledged.append((request_id, stars))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(give, sent[i::4]) for i in range(4)]
        wait_for(lambda: len(acknowledged) >= 15, "feedback acknowledged before the kill")
        os.kill(stack.pid, signal.SIGKILL)
        for future in futures:
            future.result()

    with sqlite3.connect(f"file:{database(stack)}?mode=ro", uri=True) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        stored = set(db.execute("SELECT request_id, stars FROM feedback").fetchall())
    restart_gateway(stack)
    retried = [
        stack.http.post("/v1/feedback", json={"request_id": r, "stars": s}).status_code
        for r, s in sent
    ]
    changed = [
        stack.http.post("/v1/feedback", json={"request_id": r, "stars": s % 5 + 1}).status_code
        for r, s in acknowledged
    ]

    assert integrity == "ok"
    assert set(acknowledged) <= stored  # every acknowledged write survived the kill
    assert stored <= set(sent)  # nothing stored that was not sent, and with the stars sent
    assert unanswered or len(acknowledged) == len(sent)
    assert set(retried) == {200}  # an unanswered write can simply be sent again
    assert set(changed) == {409}  # and the acknowledged ones hold their value
    assert stack.alive()


# -- a full disk under the store -------------------------------------------------------------


def limit_file_size(pid: int, limit: int) -> Callable[[], None]:
    """Files the process writes cannot grow past ``limit`` bytes (its disk is "full"); returns
    the undo. Works unprivileged: only the soft limit moves."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))

    def undo() -> None:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))

    return undo


def test_full_disk_under_the_store_answers_503_and_corrupts_nothing(stack: GatewayStack) -> None:
    (before_id, before_stars), (during_id, during_stars) = predictions_for_feedback(stack, 2)
    assert (
        stack.http.post(
            "/v1/feedback", json={"request_id": before_id, "stars": before_stars}
        ).status_code
        == 200
    )
    experiment = {
        "name": "disk-full",
        "variants": [{"name": "control", "version": "1.0", "weight": 1.0}],
        "sticky": True,
        "shadow": None,
    }

    # The prediction itself must be on disk first: this test is about the feedback write.
    wait_for(lambda: during_id in recorded_predictions(stack), "the prediction to be stored")
    undo = limit_file_size(stack.pid, 1)
    try:
        full = {
            "feedback": stack.http.post(
                "/v1/feedback", json={"request_id": during_id, "stars": during_stars}
            ),
            "experiment": stack.http.put(
                "/v1/experiment", json=experiment, headers=stack.admin_headers()
            ),
        }
        predicted_while_full = stack.http.post(PREDICT, json={"text": REVIEW})
        alive_while_full = stack.alive()
    finally:
        undo()

    with sqlite3.connect(f"file:{database(stack)}?mode=ro", uri=True) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        stored = set(db.execute("SELECT request_id, stars FROM feedback").fetchall())
    after = stack.http.post("/v1/feedback", json={"request_id": during_id, "stars": during_stars})

    assert {name: status_of(r) for name, r in full.items()} == {
        "feedback": (503, "store_unavailable"),
        "experiment": (503, "store_unavailable"),
    }
    assert predicted_while_full.status_code == 200
    assert alive_while_full
    assert integrity == "ok"
    assert (before_id, before_stars) in stored
    assert (during_id, during_stars) not in stored  # refused, so not half-written either
    assert after.status_code == 200  # room again: the same write goes through
    assert (
        stack.http.put("/v1/experiment", json=experiment, headers=stack.admin_headers()).status_code
        == 200
    )
    assert stack.alive()
