"""The inference server: a lean ASGI application serving one model over OIP v2 and ``/predict``.

No framework on the hot path: ``POST /v2/models/{name}/infer`` goes body bytes -> codec ->
batcher -> response bytes. Routes:

    GET  /v2/health/live | /v2/health/ready          (always open)
    GET  /v2 | /v2/                                  server metadata
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    POST /v2/models/{name}[/versions/{v}]/predict    image file, {"text"} or {"features"}
    GET  /metrics                                    Prometheus
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from nimbus import __version__
from nimbus.datasets.domain import Task
from nimbus.errors import NimbusError, NotFound, ServerError, Unauthorized, Unavailable
from nimbus.serving import asgi
from nimbus.serving.batcher import Batcher, BatchPolicy
from nimbus.serving.errors import MethodNotAllowed
from nimbus.serving.metrics import ServingMetrics
from nimbus.serving.predictor import DEFAULT_MAX_IMAGE_PIXELS, Predictor
from nimbus.serving.protocol import (
    HEADER_LENGTH,
    encode_infer_response,
    model_metadata,
    parse_header_length,
    parse_infer_request,
    server_metadata,
)

log = logging.getLogger(__name__)

SERVER_NAME = "nimbus"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
_MODELS = "/v2/models/"
_HEADER_LENGTH = HEADER_LENGTH.encode()

Auth = Callable[[str], bool]
Reply = tuple[int, bytes, bytes, asgi.Headers]


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
    ) -> None:
        self.predictor = predictor
        self.name = name
        self.version = version
        self.batcher = batcher
        self.metrics = metrics
        self._auth = auth
        self._max_body = max_body_bytes
        self._server_metadata = orjson.dumps(server_metadata(SERVER_NAME, __version__))
        self._model_metadata = orjson.dumps(
            model_metadata(
                name, [version], predictor.platform, [predictor.input], predictor.outputs
            )
        )
        self._input_name = predictor.input.name

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
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        route = _metric_route(path)
        try:
            reply = await self._dispatch(path, scope["method"], receive, asgi.header_map(scope))
        except asgi.Disconnected:
            return
        except NimbusError as exc:
            status, body, extra = asgi.error_reply(exc)
            reply = (status, body, asgi.JSON, extra)
        except Exception:
            log.exception("inference request failed")
            status, body, extra = asgi.error_reply(ServerError("internal error"))
            reply = (status, body, asgi.JSON, extra)
        status, body, content_type, extra = reply
        await asgi.respond(send, status, body, content_type, extra)
        if route is not None:
            self.metrics.observe_request(route, status, time.perf_counter() - started)

    async def _dispatch(
        self, path: str, method: str, receive: asgi.Receive, headers: dict[bytes, bytes]
    ) -> Reply:
        if path.startswith(_MODELS):
            self._authorize(headers)  # first: strangers learn nothing, not even model names
            action = self._model_action(path[len(_MODELS) :])
            if action in ("infer", "predict"):
                _require(method, "POST")
                body = await asgi.read_body(receive, headers, self._max_body)
                if action == "infer":
                    return await self._infer(body, headers)
                return await self._predict(body)
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
        if len(parts) > 1 or action not in ("", "ready", "infer", "predict"):
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
        predictor = self.predictor
        request = parse_infer_request(body, length, (predictor.input,), predictor.outputs)
        probabilities = await self.batcher.submit(
            predictor.prepare(request.inputs[self._input_name])
        )
        named = predictor.postprocess(probabilities, [o.spec.name for o in request.outputs])
        out, out_length = encode_infer_response(
            self.name, self.version, request.id, [(o, named[o.spec.name]) for o in request.outputs]
        )
        if out_length is None:
            return 200, out, asgi.JSON, []
        return 200, out, asgi.OCTETS, [(_HEADER_LENGTH, b"%d" % out_length)]

    async def _predict(self, body: bytes) -> Reply:
        if self.predictor.spec.task is Task.IMAGE:
            # Decoding a large image takes milliseconds: keep it off the event loop.
            example = await asyncio.to_thread(self.predictor.example_from_body, body)
        else:
            example = self.predictor.example_from_body(body)
        probabilities = await self.batcher.submit(example)
        return 200, orjson.dumps(self.predictor.describe(probabilities[0])), asgi.JSON, []


def _metric_route(path: str) -> str | None:
    """The route label requests are counted under; None for routes not counted."""
    if not path.startswith(_MODELS):
        return None
    if path.endswith("/infer"):
        return "infer"
    if path.endswith("/predict"):
        return "predict"
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
) -> InferenceApp:
    """Load ``model_dir`` and build the ASGI app serving it as ``name`` version ``version``.

    ``queue_size`` bounds the rows waiting for a batch (default 32 batches); past it requests
    get 503 with Retry-After. ``threads`` is the backend's intra-op thread count. When ``auth``
    is given (token -> bool) every route but health needs a bearer token, unless ``public``.
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
    return InferenceApp(
        predictor,
        name,
        str(version),
        batcher=batcher,
        metrics=metrics,
        auth=None if public else auth,
        max_body_bytes=max_body_bytes,
    )


def uvicorn_config(app: InferenceApp, host: str = "127.0.0.1", port: int = 8000) -> uvicorn.Config:
    """How a replica runs: httptools + uvloop, one worker, no access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
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
    **options: Any,
) -> None:
    """Serve ``model_dir`` until interrupted (``nimbus serve``). ``options`` go to create_app."""
    app = create_app(model_dir, name or Path(model_dir).resolve().name, version, **options)
    # Everything loaded so far lives as long as the process: keep it out of every GC pass.
    gc.freeze()
    uvicorn.Server(uvicorn_config(app, host, port)).run()
