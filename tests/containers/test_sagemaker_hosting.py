"""The serve image as SageMaker hosting runs it: `docker run IMAGE serve`, the variant's model
data (one .mar) in /opt/ml/model, GET /ping and POST /invocations on port 8080, called the way
InvokeEndpoint calls them (no token, JSON body): /ping 200 only once the model can predict (the
first /invocations after it is answered at once), and two variants' containers side by side,
each answering with its own version."""

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
# A loaded tiny model answers in milliseconds; before the front gated /ping, the first call
# after /ping's 200 waited 11-12 s in TorchServe's queue for the model to load.
FIRST_INVOCATION_TIMEOUT_S = 3.0


@dataclass
class Endpoint:
    container: str
    url: str
    # (seconds since the first probe, /ping status) until the first 200
    pings: list[tuple[float, int | None]] = field(default_factory=list)
    # the one /invocations sent right after /ping's first 200: status (or error) and seconds
    first_invocation: int | str | None = None
    first_answer_s: float = 0.0


def probe_until_ready(endpoint: Endpoint, timeout_s: float = 180) -> None:
    """What SageMaker does: /ping until 200, then traffic. Here one /invocations, never retried
    and with a short timeout: the container said it can predict, so it must, at once."""
    start = time.monotonic()
    with httpx.Client(base_url=endpoint.url) as http:
        while time.monotonic() - start < timeout_s:
            try:
                ping: int | None = http.get("/ping", timeout=2.0).status_code
            except httpx.TransportError:
                ping = None
            endpoint.pings.append((time.monotonic() - start, ping))
            if ping == 200:
                asked = time.monotonic()
                try:
                    endpoint.first_invocation = http.post(
                        "/invocations",
                        json={"text": REVIEW},
                        headers={"Accept": "application/json"},
                        timeout=FIRST_INVOCATION_TIMEOUT_S,
                    ).status_code
                except httpx.TransportError as error:
                    endpoint.first_invocation = type(error).__name__
                endpoint.first_answer_s = time.monotonic() - asked
                return
            time.sleep(0.2)
    pytest.fail(f"/ping never answered 200: {endpoint.pings[-5:]}")


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


def test_the_first_ping_200_is_followed_by_a_prediction_without_retry(
    endpoints: dict[str, Endpoint],
) -> None:
    for version, endpoint in endpoints.items():
        ready_at = endpoint.pings[-1][0]
        print(
            f"sagemaker {version}: /ping 200 after {ready_at:.1f}s "
            f"({sum(1 for _, p in endpoint.pings if p == 503)} probes said 503 before); the "
            f"first /invocations answered {endpoint.first_invocation} in "
            f"{endpoint.first_answer_s * 1000:.0f} ms"
        )
        assert endpoint.first_invocation == 200
        assert endpoint.first_answer_s < FIRST_INVOCATION_TIMEOUT_S
        # The front said "not yet" while TorchServe loaded the model (TorchServe's own /ping
        # says Healthy before that).
        assert any(p == 503 for _, p in endpoint.pings)


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
