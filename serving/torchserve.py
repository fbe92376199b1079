"""A client for TorchServe's inference and management APIs, used by the gateway and the CLI.

One pooled ``httpx.AsyncClient`` per ``TorchServeClient``; timeouts on every call; token
authorization with the Bearer keys TorchServe writes to its ``key_file.json`` (the inference key
for the inference address, the management key for the management address). TorchServe's keys
expire (``token_expiration_min``, 60 minutes by default): on a rejected key the client re-reads
the key file, and if the key there is the same one, rotates it with the API key and retries once.

Failures surface as the domain exceptions below (``UpstreamUnavailable``, ``UpstreamTimeout``,
``UnknownVersion``, ...), which the gateway maps to HTTP statuses in one place.
``TorchServeSyncClient`` is a thin blocking facade for the command line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from starrating.labels import STARS
from starrating.service import DEFAULT_INFERENCE_URL, DEFAULT_MANAGEMENT_URL, MODEL_NAME

logger = logging.getLogger(__name__)

KeyKind = Literal["inference", "management"]
KEY_FILE_NAME = "key_file.json"
"""What TorchServe calls the key file it writes into its working directory."""


class TorchServeError(Exception):
    """Base class of everything this client raises."""


class UpstreamUnavailable(TorchServeError):
    """TorchServe cannot be reached, has no worker for the model, or refuses our credentials."""


class ModelNotReady(UpstreamUnavailable):
    """The model is not registered (yet) or has no worker able to answer."""


class UpstreamAuthFailed(UpstreamUnavailable):
    """TorchServe rejected the token even after re-reading and rotating the key."""


class UpstreamTimeout(TorchServeError):
    """TorchServe took longer than the configured timeout to answer (``version``: the one asked,
    None for the default or a call that names none)."""

    def __init__(self, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


class UnknownVersion(TorchServeError):
    """The requested model version is not registered in TorchServe."""

    def __init__(self, version: str, message: str = "") -> None:
        super().__init__(message or f"model version {version!r} is not registered")
        self.version = version


class InvalidInput(TorchServeError):
    """The handler refused the request's content (for example an empty text)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ManagementRefused(TorchServeError):
    """TorchServe refused a management call (version exists, default version in use, ...)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"TorchServe refused ({status_code}): {message}")
        self.status_code = status_code


class BadUpstreamResponse(TorchServeError):
    """TorchServe answered with an unexpected status or a body of the wrong shape."""


@dataclass(frozen=True)
class Prediction:
    """One text's answer from the handler."""

    stars: int
    probabilities: dict[str, float]
    model_version: str


@dataclass(frozen=True)
class ExplainedWord:
    """One word of an explained text: its characters in ``Explanation.text`` and attribution."""

    word: str
    start: int
    end: int
    attribution: float


@dataclass(frozen=True)
class Explanation:
    """A text's prediction and why: integrated-gradients attributions toward its stars."""

    prediction: Prediction
    text: str
    """The text as the model read it (normalised): the words' offsets point into it."""
    words: tuple[ExplainedWord, ...]
    steps: int
    convergence_delta: float
    truncated: bool


@dataclass(frozen=True)
class ModelVersion:
    """One registered version as the management API describes it."""

    version: str
    is_default: bool  # filled in by list_versions; TorchServe's description has no such field
    workers: int
    ready_workers: int
    batch_size: int
    max_batch_delay_ms: int
    archive: str
    # The handler's describe_handle (``?customized=true`` only): numerics served, threads.
    metadata: dict[str, Any] | None = None
    newest_worker_start: datetime | None = None
    """When the most recently (re)started worker started, as TorchServe says (UTC)."""

    @property
    def ready(self) -> bool:
        return self.ready_workers > 0


@dataclass(frozen=True)
class TorchServeKeys:
    """The tokens of one TorchServe instance, as found in its key file."""

    inference: str | None = None
    management: str | None = None
    api: str | None = None

    @classmethod
    def read(cls, key_file: Path) -> TorchServeKeys:
        """Read ``key_file.json``; a missing file (TorchServe not started yet) gives no keys."""
        try:
            data = json.loads(key_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, json.JSONDecodeError) as exc:
            raise UpstreamAuthFailed(f"cannot read TorchServe key file {key_file}: {exc}") from exc

        def key(section: str) -> str | None:
            value = data.get(section, {}).get("key") if isinstance(data, dict) else None
            return str(value) if value else None

        return cls(inference=key("inference"), management=key("management"), api=key("API"))

    def for_kind(self, kind: KeyKind) -> str | None:
        return self.inference if kind == "inference" else self.management


class TorchServeClient:
    """Async client for one TorchServe model (``stars`` by default) and its versions."""

    def __init__(
        self,
        inference_url: str = DEFAULT_INFERENCE_URL,
        management_url: str = DEFAULT_MANAGEMENT_URL,
        *,
        model_name: str = MODEL_NAME,
        key_file: str | Path | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_connections: int = 100,
        connect_retries: int = 0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.model_name = model_name
        self._key_file = Path(key_file) if key_file is not None else None
        self._keys = TorchServeKeys.read(self._key_file) if self._key_file else TorchServeKeys()
        self._key_lock = asyncio.Lock()
        self._connect_retries = connect_retries
        self._http = httpx.AsyncClient(
            # aiohttp's pool applies httpx's pool timeout to waiting for a free connection AND
            # opening a new one, so it gets both budgets: a tiny answer timeout must not turn
            # into "cannot connect", and a request may still queue for a connection as long as
            # it may wait for an answer.
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=timeout + connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- inference ---------------------------------------------------------------------------

    async def predict(self, texts: Sequence[str], version: str | None = None) -> list[Prediction]:
        """Stars for each text, from ``version`` or the default version; one HTTP request."""
        if not texts:
            return []
        path = self._model_path(version, prefix="/predictions")
        response = await self._request(
            "POST", "inference", path, json={"texts": list(texts)}, version=version
        )
        body = self._answer(response, version)
        if not isinstance(body, list) or len(body) != len(texts):
            raise BadUpstreamResponse(
                f"expected a list of {len(texts)} predictions from TorchServe, got {_shape(body)}"
            )
        return [_prediction(item) for item in body]

    async def explain(
        self, text: str, version: str | None = None, *, timeout: float | None = None
    ) -> Explanation:
        """The prediction of ``text`` with its words' attributions (TorchServe's explanations
        API); ``timeout`` replaces the client's, since one explanation costs many predictions."""
        path = self._model_path(version, prefix="/explanations")
        options: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        response = await self._request(
            "POST", "inference", path, json={"text": text}, version=version, **options
        )
        return _explanation(self._answer(response, version))

    def _answer(self, response: httpx.Response, version: str | None) -> Any:
        """The handler's JSON answer; its error object (400) or a failed status raised."""
        body = _json(response)
        if response.status_code == 400 and _is_error_object(body):
            error = body["error"]
            raise InvalidInput(str(error.get("code", "invalid_input")), str(error.get("message")))
        self._raise_for_status(response, version)
        return body

    async def ping(self) -> bool:
        """TorchServe's own health (true before any model has loaded: not a readiness check)."""
        try:
            response = await self._request("GET", "inference", "/ping")
        except TorchServeError:
            return False
        return response.status_code == 200

    # -- management --------------------------------------------------------------------------

    async def list_versions(self) -> list[ModelVersion]:
        """Every registered version of the model; empty when the model is not registered."""
        response = await self._request("GET", "management", f"/models/{self.model_name}/all")
        if response.status_code == 404:
            return []
        self._raise_for_status(response, None)
        body = _json(response)
        if not isinstance(body, list):
            raise BadUpstreamResponse(f"expected a list of versions, got {_shape(body)}")
        versions = [_model_version(item) for item in body]
        # TorchServe's descriptions carry no default flag: the unversioned one is the default.
        try:
            default = (await self.describe()).version
        except ModelNotReady:
            return versions
        return [replace(v, is_default=v.version == default) for v in versions]

    async def describe(
        self, version: str | None = None, *, customized: bool = False
    ) -> ModelVersion:
        """One version (the default when ``version`` is None); ``customized`` also asks a
        worker for the handler's own description (``metadata``)."""
        response = await self._request(
            "GET",
            "management",
            self._model_path(version, prefix="/models"),
            version=version,
            params={"customized": "true"} if customized else None,
        )
        self._raise_for_status(response, version)
        body = _json(response)
        if not isinstance(body, list) or not body:
            raise BadUpstreamResponse(f"expected a model description, got {_shape(body)}")
        return _model_version(body[0])

    async def timeout_cause(
        self, timeout: UpstreamTimeout, within_s: float, waited_s: float
    ) -> TorchServeError:
        """What a call that timed out after ``waited_s`` really met, asked of the management API
        within ``within_s``: ``UpstreamUnavailable`` when TorchServe cannot be reached now (gone
        mid-request, its address vanished with its container), ``ModelNotReady`` when the
        version has no ready worker (TorchServe restarting and still loading it, or not
        registered again yet) or a worker of it (re)started within the last 2 x ``waited_s``
        (the call waited for it to load), else ``timeout`` itself: a live model that is slow,
        or a management API that is stuck too."""
        try:
            async with asyncio.timeout(within_s):
                description = await self.describe(timeout.version)
        except UnknownVersion:
            return ModelNotReady(f"{timeout}; version {timeout.version} is not registered (yet)")
        except UpstreamUnavailable as exc:
            return type(exc)(f"{timeout}; then: {exc}")
        except (TimeoutError, TorchServeError):
            return timeout
        if not description.ready:
            return ModelNotReady(f"{timeout}; version {description.version} has no ready worker")
        started = description.newest_worker_start
        age_s = (datetime.now(UTC) - started).total_seconds() if started else None
        if age_s is not None and age_s < 2 * waited_s:
            return ModelNotReady(
                f"{timeout}; a worker of version {description.version} started {age_s:.0f}s ago"
            )
        return timeout

    async def model_ready(self, version: str | None = None) -> bool:
        """True when the version is registered and has at least one ready worker."""
        try:
            return (await self.describe(version)).ready
        except (UnknownVersion, UpstreamUnavailable, UpstreamTimeout):
            return False

    async def register(
        self,
        archive: str,
        *,
        initial_workers: int = 1,
        synchronous: bool = True,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
        response_timeout_s: int | None = None,
    ) -> str:
        """Register an archive (a file name in TorchServe's model store, or an allowed URL).

        Batching parameters left as None come from the archive's ``model-config.yaml``.
        """
        params: dict[str, str | int] = {
            "url": archive,
            "model_name": self.model_name,
            "initial_workers": initial_workers,
            "synchronous": str(synchronous).lower(),
        }
        if batch_size is not None:
            params["batch_size"] = batch_size
        if max_batch_delay_ms is not None:
            params["max_batch_delay"] = max_batch_delay_ms
        if response_timeout_s is not None:
            params["response_timeout"] = response_timeout_s
        response = await self._request("POST", "management", "/models", params=params)
        if response.status_code in (400, 403, 409):
            raise ManagementRefused(response.status_code, _message(response))
        self._raise_for_status(response, None)
        return _message(response)

    async def set_default(self, version: str) -> None:
        """Make ``version`` answer the unversioned route ``/predictions/<model>``."""
        response = await self._request(
            "PUT",
            "management",
            f"/models/{self.model_name}/{version}/set-default",
            version=version,
        )
        self._raise_for_status(response, version)

    async def unregister(self, version: str) -> None:
        """Unregister one version (TorchServe refuses the default while others remain)."""
        response = await self._request(
            "DELETE", "management", f"/models/{self.model_name}/{version}", version=version
        )
        if response.status_code in (400, 403, 409):
            raise ManagementRefused(response.status_code, _message(response))
        self._raise_for_status(response, version)

    # -- plumbing ----------------------------------------------------------------------------

    def _model_path(self, version: str | None, *, prefix: str) -> str:
        base = f"{prefix}/{self.model_name}"
        return f"{base}/{version}" if version else base

    async def _request(
        self,
        method: str,
        kind: KeyKind,
        path: str,
        *,
        version: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        base = self.inference_url if kind == "inference" else self.management_url
        key = self._keys.for_kind(kind)
        response = await self._send(method, base + path, key, version=version, **kwargs)
        if _is_auth_failure(response) and self._key_file is not None:
            fresh = await self._fresh_key(kind, rejected=key)
            if fresh is not None:
                response = await self._send(method, base + path, fresh, version=version, **kwargs)
        if _is_auth_failure(response):
            raise UpstreamAuthFailed(
                f"TorchServe rejected the {kind} token; is STARRATING_TORCHSERVE_KEY_FILE the "
                "key_file.json of this TorchServe instance?"
            )
        return response

    async def _send(
        self, method: str, url: str, key: str | None, version: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            for _ in range(self._connect_retries):
                try:
                    return await self._http.request(method, url, headers=headers, **kwargs)
                except httpx.ConnectError:
                    pass  # nothing was sent when the connection failed: trying again is safe
            return await self._http.request(method, url, headers=headers, **kwargs)
        except httpx.ConnectTimeout as exc:
            raise UpstreamUnavailable(f"cannot connect to TorchServe at {url}: timeout") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(
                f"TorchServe did not answer {method} {url} in time", version
            ) from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"cannot reach TorchServe at {url}: {exc!r}") from exc

    async def _fresh_key(self, kind: KeyKind, rejected: str | None) -> str | None:
        """A key other than ``rejected``: from the key file, or rotated with the API key."""
        assert self._key_file is not None
        async with self._key_lock:
            self._keys = TorchServeKeys.read(self._key_file)
            current = self._keys.for_kind(kind)
            if current is not None and current != rejected:
                return current
            if self._keys.api is None:
                return None
            logger.info("TorchServe %s token expired or rejected; rotating it", kind)
            rotate = await self._send(
                "POST", f"{self.management_url}/token", self._keys.api, params={"type": kind}
            )
            if rotate.status_code != 200:
                logger.warning("TorchServe token rotation failed: HTTP %d", rotate.status_code)
                return None
            self._keys = TorchServeKeys.read(self._key_file)
            return self._keys.for_kind(kind)

    def _raise_for_status(self, response: httpx.Response, version: str | None) -> None:
        status = response.status_code
        if status < 300:
            return
        message = _message(response)
        if status == 404:
            if version is not None:
                raise UnknownVersion(version, message)
            raise ModelNotReady(f"model {self.model_name!r} is not registered: {message}")
        if status in (503, 507):
            # 507 "Worker died.": the worker crashed with this request; TorchServe restarts it.
            raise ModelNotReady(f"TorchServe has no worker ready: {message}")
        if status in (408, 504):
            raise UpstreamTimeout(f"TorchServe timed out: {message}", version)
        if status == 413:
            raise InvalidInput("too_large", f"TorchServe refused the request size: {message}")
        raise BadUpstreamResponse(f"TorchServe answered HTTP {status}: {message}")


class TorchServeSyncClient:
    """Blocking facade over ``TorchServeClient`` for the command line (one private event loop)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._client: TorchServeClient = self._runner.run(_make_client(*args, **kwargs))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()

    def predict(self, texts: Sequence[str], version: str | None = None) -> list[Prediction]:
        return self._runner.run(self._client.predict(texts, version))

    def ping(self) -> bool:
        return self._runner.run(self._client.ping())

    def list_versions(self) -> list[ModelVersion]:
        return self._runner.run(self._client.list_versions())

    def describe(self, version: str | None = None, *, customized: bool = False) -> ModelVersion:
        return self._runner.run(self._client.describe(version, customized=customized))

    def model_ready(self, version: str | None = None) -> bool:
        return self._runner.run(self._client.model_ready(version))

    def register(self, archive: str, **kwargs: Any) -> str:
        return self._runner.run(self._client.register(archive, **kwargs))

    def set_default(self, version: str) -> None:
        self._runner.run(self._client.set_default(version))

    def unregister(self, version: str) -> None:
        self._runner.run(self._client.unregister(version))


async def _make_client(*args: Any, **kwargs: Any) -> TorchServeClient:
    # Built inside the runner's loop so its lock and connection pool belong to that loop.
    return TorchServeClient(*args, **kwargs)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _message(response: httpx.Response) -> str:
    body = _json(response)
    if isinstance(body, Mapping):
        if _is_error_object(body):
            return str(body["error"].get("message"))
        return str(body.get("message") or body.get("status") or body)
    return response.text[:200]


def _is_error_object(body: Any) -> bool:
    return isinstance(body, Mapping) and isinstance(body.get("error"), Mapping)


def _is_auth_failure(response: httpx.Response) -> bool:
    # TorchServe 0.12 answers a missing, wrong or expired token with 400 InvalidKeyException.
    if response.status_code == 401:
        return True
    if response.status_code != 400:
        return False
    body = _json(response)
    return isinstance(body, Mapping) and body.get("type") == "InvalidKeyException"


def _shape(body: Any) -> str:
    if isinstance(body, list):
        return f"a list of {len(body)}"
    return type(body).__name__


def _prediction(item: Any) -> Prediction:
    try:
        stars = item["stars"]
        probabilities = {str(k): float(v) for k, v in item["probabilities"].items()}
        version = str(item["model_version"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BadUpstreamResponse(f"malformed prediction from TorchServe: {exc!r}") from exc
    expected = {str(s) for s in STARS}
    if isinstance(stars, bool) or stars not in STARS or set(probabilities) != expected:
        raise BadUpstreamResponse("prediction from TorchServe is outside the 1-5 star scheme")
    return Prediction(stars=int(stars), probabilities=probabilities, model_version=version)


def _explanation(item: Any) -> Explanation:
    prediction = _prediction(item)
    try:
        return Explanation(
            prediction=prediction,
            text=str(item["text"]),
            words=tuple(
                ExplainedWord(
                    str(w["word"]), int(w["start"]), int(w["end"]), float(w["attribution"])
                )
                for w in item["words"]
            ),
            steps=int(item["steps"]),
            convergence_delta=float(item["convergence_delta"]),
            truncated=bool(item["truncated"]),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BadUpstreamResponse(f"malformed explanation from TorchServe: {exc!r}") from exc


def _started(worker: Mapping[str, Any]) -> datetime | None:
    """A worker's ``startTime`` (``2024-09-01T10:00:00.123Z``); None when absent or odd."""
    try:
        started = datetime.fromisoformat(str(worker["startTime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return started if started.tzinfo is not None else None


def _model_version(item: Any) -> ModelVersion:
    try:
        workers = item.get("workers") or []
        starts = [s for s in (_started(w) for w in workers) if s is not None]
        return ModelVersion(
            version=str(item["modelVersion"]),
            is_default=False,
            workers=len(workers),
            ready_workers=sum(1 for w in workers if w.get("status") == "READY"),
            batch_size=int(item.get("batchSize", 1)),
            max_batch_delay_ms=int(item.get("maxBatchDelay", 0)),
            archive=str(item.get("modelUrl", "")),
            metadata=metadata
            if isinstance(metadata := item.get("customizedMetadata"), dict)
            else None,
            newest_worker_start=max(starts, default=None),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise BadUpstreamResponse(f"malformed model description from TorchServe: {exc!r}") from exc
