"""The inference server: a lean ASGI application serving one model over OIP v2 and ``/predict``.

No framework on the hot path: ``POST /v2/models/{name}/infer`` goes body bytes -> codec ->
batcher -> response bytes, and small infer and predict requests do not even go through ASGI:
the replica's HTTP protocol hands them to :meth:`InferenceApp.handle` (see
:mod:`nimbus.serving.fastpath`), which answers exactly as the ASGI route would. Routes:

    GET  /v2/health/live | /v2/health/ready          (always open)
    GET  /v2 | /v2/                                  server metadata
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    POST /v2/models/{name}[/versions/{v}]/predict    image file, {"text"} or {"features"},
                                                     or a form of them (serving/forms.py)
    POST /v2/models/{name}[/versions/{v}]/explain    the prediction and its attributions
                                                     (serving/explaining.py)
    GET  /metrics                                    Prometheus
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import uvicorn

from nimbus import __version__
from nimbus.datasets.domain import Task
from nimbus.errors import NimbusError, NotFound, ServerError, Unauthorized, Unavailable
from nimbus.names import whole_number
from nimbus.serving import asgi, forms
from nimbus.serving.batcher import Batcher, BatchPolicy
from nimbus.serving.errors import MethodNotAllowed
from nimbus.serving.explaining import DEFAULT_MAX_PENDING, Explainer
from nimbus.serving.fastpath import Reply as FastReply
from nimbus.serving.fastpath import fast_protocol
from nimbus.serving.memory import release_memory, tune_allocator
from nimbus.serving.metrics import ServingMetrics
from nimbus.serving.predictor import DEFAULT_MAX_IMAGE_PIXELS, Predictor
from nimbus.serving.protocol import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_TENSOR_ELEMENTS,
    HEADER_LENGTH,
    InferCodec,
    InferRequest,
    RequestLimits,
    encode_infer_response,
    model_metadata,
    parse_header_length,
    server_metadata,
)
from nimbus.serving.timeouts import DEFAULT_READ_TIMEOUTS, ReadTimeouts

log = logging.getLogger(__name__)

SERVER_NAME = "nimbus"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_MODELS = "/v2/models/"
_HEADER_LENGTH = HEADER_LENGTH.encode()
# Bodies from this size on are decoded (and text tokenised) on a decoding thread, not on the
# event loop, so health checks and small requests are answered meanwhile; smaller ones cost
# less than the hand-off. From RELEASE_BYTES on, freed memory goes back to the system after.
OFFLOAD_BYTES = 64 * 1024
RELEASE_BYTES = 1024 * 1024
_OFFLOAD_OUTPUTS = 16 * 1024  # output elements from which the response is encoded off the loop

Auth = Callable[[str], bool]
Reply = tuple[int, bytes, bytes, asgi.Headers]
_T = TypeVar("_T")


class InferenceApp:
    """ASGI application serving one model version. Build it with :func:`create_app`."""

    def __init__(
        self,
        predictor: Predictor,
        name: str,
        version: str,
        *,
        batcher: Batcher,
        metrics: ServingMetrics,
        auth: Auth | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        limits: RequestLimits = DEFAULT_LIMITS,
        explainer: Explainer | None = None,
    ) -> None:
        self.predictor = predictor
        self.explainer = explainer
        self.name = name
        self.version = version
        self.batcher = batcher
        self.metrics = metrics
        self._auth = auth
        self._max_body = max_body_bytes
        self.limits = limits
        # One decoding thread: large requests decode one at a time, which bounds the memory
        # they take together as well as the CPU they take from the event loop.
        self._decoder: ThreadPoolExecutor | None = None
        self._server_metadata = orjson.dumps(server_metadata(SERVER_NAME, __version__))
        self._model_metadata = orjson.dumps(
            model_metadata(
                name, [version], predictor.platform, [predictor.input], predictor.outputs
            )
        )
        self._input_name = predictor.input.name
        self._codec = InferCodec((predictor.input,), predictor.outputs, limits)
        # The exact paths the fast path takes (image uploads are decoded off the loop: not
        # fast), and the largest body it reads (larger ones are decoded off the loop too).
        actions = ("infer",) if predictor.spec.task is Task.IMAGE else ("infer", "predict")
        self._fast_routes = {
            f"{_MODELS}{name}{version_part}/{action}": action
            for action in actions
            for version_part in ("", f"/versions/{version}")
        }
        self._fast_body = min(OFFLOAD_BYTES - 1, max_body_bytes)

    @property
    def ready(self) -> bool:
        return not self.batcher.closed

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: asgi.Receive, send: asgi.Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.batcher.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.batcher.close()
                if self.explainer is not None:
                    self.explainer.close()
                if self._decoder is not None:
                    self._decoder.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        route = _metric_route(path)
        try:
            headers = asgi.header_map(scope)
            reply = await self._dispatch(path, scope["method"], receive, headers, scope)
        except asgi.Disconnected:
            return
        except Exception as exc:
            reply = _error_reply(exc)
        status, body, content_type, extra = reply
        await asgi.respond(send, status, body, content_type, extra)
        if route is not None:
            self.metrics.observe_request(route, status, time.perf_counter() - started)

    def accepts(self, method: str, path: str, headers: asgi.Headers) -> bool:
        """Whether :meth:`handle` answers this request (a :class:`FastHandler` method): an
        infer or predict POST with a small declared body, not compressed and not a form."""
        if method != "POST" or path not in self._fast_routes:
            return False
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name in (b"content-encoding", b"transfer-encoding"):
                return False
        if length is None or (
            self._fast_routes[path] == "predict" and forms.is_form(dict(headers))
        ):
            return False
        size = whole_number(length.decode("latin-1"))
        return size is not None and size <= self._fast_body

    def handle(self, path: str, headers: asgi.Headers, body: bytes, reply: FastReply) -> None:
        """Answer a request :meth:`accepts` took, as :meth:`__call__` would, through ``reply``
        once its batch has run (a :class:`FastHandler` method)."""
        started = time.perf_counter()
        route = self._fast_routes[path]
        request: InferRequest | None = None
        try:
            header_map = dict(headers)
            self._authorize(header_map)
            if route == "infer":
                length = parse_header_length(header_map.get(_HEADER_LENGTH), len(body))
                request, inputs = self._decode(body, length)
            else:
                inputs = self.predictor.example_from_body(body)
            future = self.batcher.enqueue(inputs)
        except Exception as exc:
            self._fast_reply(reply, route, started, _error_reply(exc))
            return

        def done(future: asyncio.Future[np.ndarray]) -> None:
            self._fast_done(future, request, route, started, reply)

        future.add_done_callback(done)

    def _fast_done(
        self,
        future: asyncio.Future[np.ndarray],
        request: InferRequest | None,
        route: str,
        started: float,
        reply: FastReply,
    ) -> None:
        try:
            if future.cancelled():
                raise Unavailable("the server is shutting down")
            probabilities = future.result()
            if request is None:
                answer = orjson.dumps(self.predictor.describe(probabilities[0]))
                out: Reply = (200, answer, asgi.JSON, [])
            elif probabilities.size < _OFFLOAD_OUTPUTS:
                out = self._encode(request, probabilities)
            else:
                encoded = self._decoder_pool().submit(self._encode, request, probabilities)

                def encoded_done(encoded: Future[Reply]) -> None:
                    error = encoded.exception()
                    out = encoded.result() if error is None else _error_reply(error)
                    self._fast_reply(reply, route, started, out)

                asyncio.wrap_future(encoded).add_done_callback(lambda _: encoded_done(encoded))
                return
        except Exception as exc:
            out = _error_reply(exc)
        self._fast_reply(reply, route, started, out)

    def _fast_reply(self, reply: FastReply, route: str, started: float, out: Reply) -> None:
        status, body, content_type, extra = out
        reply(status, body, content_type, extra)
        self.metrics.observe_request(route, status, time.perf_counter() - started)

    async def _dispatch(
        self,
        path: str,
        method: str,
        receive: asgi.Receive,
        headers: dict[bytes, bytes],
        scope: asgi.Scope,
    ) -> Reply:
        if path.startswith(_MODELS):
            self._authorize(headers)  # first: strangers learn nothing, not even model names
            action = self._model_action(path[len(_MODELS) :])
            if action in ("infer", "predict"):
                _require(method, "POST")
                if action == "predict" and forms.is_form(headers):
                    return await self._predict(await self._read_form(receive, headers))
                body = await asgi.read_body(receive, headers, self._max_body)
                if action == "infer":
                    return await self._infer(body, headers)
                return await self._predict(body)
            if action == "explain":
                _require(method, "POST")
                if self.explainer is None:
                    raise NotFound("this server does not explain")
                body = await asgi.read_body(receive, headers, self._max_body)
                query = scope.get("query_string", b"")
                answer, _ = await self.explainer.reply(body, headers, query)
                return 200, answer, asgi.JSON, []
            _require(method, "GET")
            if action == "ready":
                return self._health(self.ready)
            return 200, self._model_metadata, asgi.JSON, []
        _require(method, "GET")
        if path == "/v2/health/live":
            return self._health(True)
        if path == "/v2/health/ready":
            return self._health(self.ready)
        if path in ("/v2", "/v2/"):
            self._authorize(headers)
            return 200, self._server_metadata, asgi.JSON, []
        if path == "/metrics":
            self._authorize(headers)
            return 200, self.metrics.render(), self.metrics.content_type.encode(), []
        raise NotFound(f"no route {path}")

    def _model_action(self, rest: str) -> str:
        parts = rest.split("/")
        name, parts = parts[0], parts[1:]
        if name != self.name:
            raise NotFound(f"unknown model '{name}'")
        if len(parts) >= 2 and parts[0] == "versions":
            if parts[1] != self.version:
                raise NotFound(f"model '{name}' has no version '{parts[1]}'")
            parts = parts[2:]
        action = parts[0] if parts else ""
        if len(parts) > 1 or action not in ("", "ready", "infer", "predict", "explain"):
            raise NotFound(f"no route /v2/models/{rest}")
        return action

    def _authorize(self, headers: dict[bytes, bytes]) -> None:
        if self._auth is None:
            return
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token or not self._auth(token.strip()):
            raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")

    def _health(self, ok: bool) -> Reply:
        if ok:
            return 200, b"", asgi.TEXT, []
        raise Unavailable("the model is not ready")

    async def _infer(self, body: bytes, headers: dict[bytes, bytes]) -> Reply:
        length = parse_header_length(headers.get(_HEADER_LENGTH), len(body))
        size = len(body)
        try:
            if size < OFFLOAD_BYTES:
                request, inputs = self._decode(body, length)
            else:
                request, inputs = await self._off_loop(self._decode, body, length)
            probabilities = await self.batcher.submit(inputs)
            if probabilities.size < _OFFLOAD_OUTPUTS:
                return self._encode(request, probabilities)
            return await self._off_loop(self._encode, request, probabilities)
        finally:
            if size >= RELEASE_BYTES:
                self._release_later()

    def _decode(self, body: bytes, length: int | None) -> tuple[InferRequest, np.ndarray]:
        request = self._codec.parse(body, length)
        return request, self.predictor.prepare(request.inputs[self._input_name])

    def _encode(self, request: InferRequest, probabilities: np.ndarray) -> Reply:
        wanted = request.outputs
        named = self.predictor.postprocess(probabilities, [o.spec.name for o in wanted])
        out, out_length = encode_infer_response(
            self.name, self.version, request.id, [(o, named[o.spec.name]) for o in wanted]
        )
        if out_length is None:
            return 200, out, asgi.JSON, []
        return 200, out, asgi.OCTETS, [(_HEADER_LENGTH, b"%d" % out_length)]

    async def _predict(self, body: bytes) -> Reply:
        if self.predictor.spec.task is Task.IMAGE or len(body) >= OFFLOAD_BYTES:
            # Decoding a large image or document takes milliseconds: keep it off the loop.
            example = await self._off_loop(self.predictor.example_from_body, body)
        else:
            example = self.predictor.example_from_body(body)
        probabilities = await self.batcher.submit(example)
        return 200, orjson.dumps(self.predictor.describe(probabilities[0])), asgi.JSON, []

    async def _read_form(self, receive: asgi.Receive, headers: dict[bytes, bytes]) -> bytes:
        predictor = self.predictor
        return await forms.read_form(
            receive,
            headers,
            predictor.spec.task,
            max_body=self._max_body,
            max_pixels=predictor.max_image_pixels,
        )

    def _decoder_pool(self) -> ThreadPoolExecutor:
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nimbus-decode")
        return self._decoder

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._decoder_pool(), fn, *args)

    def _release_later(self) -> None:
        """Trim the heap on the decoding thread once this request's buffers are gone."""
        self._decoder_pool().submit(release_memory)


def _error_reply(exc: BaseException) -> Reply:
    """The reply for a request that failed with ``exc`` (500 for anything not ours)."""
    if not isinstance(exc, NimbusError):
        log.error("inference request failed", exc_info=exc)
        exc = ServerError("internal error")
    status, body, extra = asgi.error_reply(exc)
    return status, body, asgi.JSON, extra


def _metric_route(path: str) -> str | None:
    """The route label requests are counted under; None for routes not counted."""
    if not path.startswith(_MODELS):
        return None
    if path.endswith("/infer"):
        return "infer"
    if path.endswith("/predict"):
        return "predict"
    if path.endswith("/explain"):
        return "explain"
    return None


def _require(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(allowed)


def create_app(
    model_dir: Path | str,
    name: str,
    version: str | int = "1",
    *,
    max_batch_size: int = 32,
    max_delay_ms: float = 2.0,
    queue_size: int | None = None,
    threads: int = 1,
    runtime: str = "onnx",
    auth: Auth | None = None,
    public: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
    max_tensor_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS,
    max_explain_pending: int = DEFAULT_MAX_PENDING,
) -> InferenceApp:
    """Load ``model_dir`` and build the ASGI app serving it as ``name`` version ``version``.

    ``queue_size`` bounds the rows waiting for a batch (default 32 batches); past it requests
    get 503 with Retry-After. ``threads`` is the backend's intra-op thread count. When ``auth``
    is given (token -> bool) every route but health needs a bearer token, unless ``public``.
    ``max_batch_rows`` and ``max_tensor_elements`` cap each infer request (413 past them).
    ``max_explain_pending``: explain requests waiting or running at most (503 past it).
    """
    predictor = Predictor.load(
        Path(model_dir), runtime=runtime, threads=threads, max_image_pixels=max_image_pixels
    )
    metrics = ServingMetrics(name)
    batcher = Batcher(
        predictor.run,
        BatchPolicy(max_batch_size, max_delay_ms / 1000.0),
        max_queued_rows=queue_size if queue_size is not None else 32 * max_batch_size,
        on_batch=metrics.observe_batch,
    )
    metrics.watch_queue(lambda: batcher.queued_rows)
    limits = RequestLimits(max_batch_rows, max_tensor_elements)
    codec = InferCodec((predictor.input,), predictor.outputs, limits)
    explainer = Explainer(
        name,
        str(version),
        Path(model_dir),
        predictor,
        codec,
        metrics,
        max_pending=max_explain_pending,
    )
    return InferenceApp(
        predictor,
        name,
        str(version),
        batcher=batcher,
        metrics=metrics,
        auth=None if public else auth,
        max_body_bytes=max_body_bytes,
        limits=limits,
        explainer=explainer,
    )


def uvicorn_config(
    app: InferenceApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    timeouts: ReadTimeouts = DEFAULT_READ_TIMEOUTS,
    *,
    fast_while: Callable[[], bool] | None = None,
) -> uvicorn.Config:
    """How a replica runs: httptools + uvloop with read ``timeouts`` (slow clients are cut
    off), ``app``'s inference routes answered by the protocol itself (while ``fast_while()``,
    if given: a draining replica turns it off), one worker, no access log, and no
    proxy-headers middleware (nothing here reads the client's address; it would cost every
    request a wrapper)."""
    protocol = (
        fast_protocol(app, timeouts)
        if fast_while is None
        else fast_protocol(app, timeouts, is_open=fast_while)
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,
        workers=1,
        log_level="warning",
    )


def serve(
    model_dir: Path | str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    name: str | None = None,
    version: str | int = "1",
    timeouts: ReadTimeouts = DEFAULT_READ_TIMEOUTS,
    **options: Any,
) -> None:
    """Serve ``model_dir`` until interrupted (``nimbus serve``). ``options`` go to create_app."""
    tune_allocator()
    app = create_app(model_dir, name or Path(model_dir).resolve().name, version, **options)
    # Everything loaded so far lives as long as the process: keep it out of every GC pass.
    gc.freeze()
    uvicorn.Server(uvicorn_config(app, host, port, timeouts)).run()
