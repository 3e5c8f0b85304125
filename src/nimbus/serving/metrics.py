"""Prometheus metrics of one serving replica, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_EXPLAIN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    """Requests by route and status, request latency, batch sizes and queue depth; the
    explanations' time and queue."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "nimbus_inference_requests",
            "Inference requests answered, by route and HTTP status.",
            ["model", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "nimbus_inference_request_seconds",
            "Time from request start to response, by route.",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._batch = Histogram(
            "nimbus_inference_batch_size",
            "Rows per batch run by the model.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        ).labels(model)
        self._queue_depth = Gauge(
            "nimbus_inference_queue_depth",
            "Rows waiting for a batch.",
            ["model"],
            registry=self.registry,
        ).labels(model)
        self._explain_seconds = Histogram(
            "nimbus_explain_seconds",
            "Time an explanation took, its wait for the explain thread included.",
            ["model"],
            buckets=_EXPLAIN_BUCKETS,
            registry=self.registry,
        ).labels(model)
        self._explain_queue = Gauge(
            "nimbus_explain_queue_depth",
            "Explain requests waiting or running.",
            ["model"],
            registry=self.registry,
        ).labels(model)
        self._model = model
        # Label lookups cost more than the increments: each child is looked up once.
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the queue depth at every scrape."""
        self._queue_depth.set_function(depth)

    def watch_explain_queue(self, depth: Callable[[], float]) -> None:
        self._explain_queue.set_function(depth)

    def observe_explain(self, seconds: float) -> None:
        self._explain_seconds.observe(seconds)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, status))
        if children is None:
            children = (
                self._requests.labels(self._model, route, str(status)),
                self._latency.labels(self._model, route),
            )
            self._request_children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, rows: int) -> None:
        self._batch.observe(rows)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
