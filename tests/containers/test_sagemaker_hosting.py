"""The serve image as SageMaker hosting runs it: `docker run IMAGE serve`, the variant's model
data (one .mar) in /opt/ml/model, GET /ping and POST /invocations on port 8080, called the way
InvokeEndpoint calls them (no token, JSON body). Two variants' containers side by side, each
answering with its own version."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.containers.conftest import docker, free_port, tiny_store

# The first test to use `images` waits for a cold build (about 8 minutes here).
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]

REVIEW = "Really bad. I hope they don't make this anymore."
INVOKE_TIMEOUT_S = 60.0


@dataclass
class Endpoint:
    container: str
    url: str
    # (seconds since start, /ping status, /invocations status) while it was starting
    probes: list[tuple[float, int | None, int | str | None]] = field(default_factory=list)
    # how long the first /invocations after /ping's first 200 took
    first_answer_s: float = 0.0


def probe_until_ready(endpoint: Endpoint, timeout_s: float = 180) -> None:
    """Ask /ping and /invocations together until /ping says 200, recording both answers."""
    start = time.monotonic()
    # InvokeEndpoint waits up to 60 s for a container's answer: that is the bound here too.
    with httpx.Client(base_url=endpoint.url, timeout=INVOKE_TIMEOUT_S) as http:
        while time.monotonic() - start < timeout_s:
            try:
                ping: int | None = http.get("/ping", timeout=2.0).status_code
            except httpx.TransportError:
                ping = None
            asked = time.monotonic()
            try:
                invoked: int | str | None = http.post(
                    "/invocations", json={"text": REVIEW}, headers={"Accept": "application/json"}
                ).status_code
            except httpx.TransportError as error:
                invoked = type(error).__name__
            endpoint.probes.append((asked - start, ping, invoked))
            if ping == 200:
                endpoint.first_answer_s = time.monotonic() - asked
                return
            time.sleep(0.2)
    pytest.fail(f"/ping never answered 200: {endpoint.probes[-5:]}")


@pytest.fixture(scope="module")
def endpoints(
    images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Endpoint]]:
    """Two production variants, 1.0 and 2.0, each its own container with its own model data."""
    home = tmp_path_factory.mktemp("sagemaker-hosting")
    home.chmod(0o755)
    store = tiny_store(home, {"1.0": 0, "2.0": 1})
    started: dict[str, Endpoint] = {}
    try:
        for version in ("1.0", "2.0"):
            model_dir = home / f"variant-{version}"
            model_dir.mkdir(mode=0o755)
            shutil.copy(store / f"stars-{version}.mar", model_dir)
            (model_dir / f"stars-{version}.mar").chmod(0o644)
            port = free_port()
            container = docker(
                "run", "-d",
                "-p", f"127.0.0.1:{port}:8080",
                "-v", f"{model_dir}:/opt/ml/model:ro",
                images["serve"], "serve",
            ).stdout.strip()  # fmt: skip
            started[version] = Endpoint(container, f"http://127.0.0.1:{port}")
        threads = [threading.Thread(target=probe_until_ready, args=(e,)) for e in started.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        yield started
    finally:
        for endpoint in started.values():
            docker("rm", "-f", endpoint.container, check=False)


def test_once_ping_answers_200_every_invocation_gets_a_prediction(
    endpoints: dict[str, Endpoint],
) -> None:
    for version, endpoint in endpoints.items():
        # Once /ping says 200, SageMaker sends traffic: every /invocations from then on gets a
        # prediction within InvokeEndpoint's 60 s. (TorchServe's /ping can turn 200 while the
        # worker is still loading the model: such a call waits in TorchServe's queue and is
        # answered once it has loaded; the wait is printed.)
        early = [(t, p, i) for t, p, i in endpoint.probes if p == 200 and i != 200]
        assert not early, f"/ping was 200 but /invocations did not answer: {early}"
        assert endpoint.probes[-1][1:] == (200, 200)
        print(
            f"sagemaker {version}: first /invocations after /ping 200 took "
            f"{endpoint.first_answer_s:.1f}s"
        )


def test_each_variant_answers_invocations_with_its_own_version(
    endpoints: dict[str, Endpoint],
) -> None:
    for version, endpoint in endpoints.items():
        with httpx.Client(base_url=endpoint.url, timeout=30.0) as http:
            # InvokeEndpoint: POST /invocations, ContentType application/json, no token.
            answer = http.post(
                "/invocations",
                content=b'{"text": "I loved it! I will recommend this to everyone."}',
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == version
        assert 1 <= body["stars"] <= 5
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_the_container_writes_no_key_file_and_exits_cleanly_on_docker_stop(
    endpoints: dict[str, Endpoint],
) -> None:
    endpoint = endpoints["1.0"]
    listing = docker("exec", endpoint.container, "ls", "/var/lib/torchserve/state").stdout
    assert "key_file.json" not in listing
    # SageMaker stops hosting containers with SIGTERM; tini forwards it to TorchServe, which
    # must exit on it rather than wait for the SIGKILL after the grace period (exit code 137).
    started = time.monotonic()
    docker("stop", "--time", "30", endpoint.container, timeout=60)
    assert time.monotonic() - started < 30
    code = docker("inspect", "--format", "{{.State.ExitCode}}", endpoint.container).stdout
    assert int(code) != 137
