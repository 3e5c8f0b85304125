"""What the console asks a deployment's replicas, server side: their Prometheus metrics
(scraped from each replica's private port) and Try it (the deployment's ``/predict`` and
``/explain``), both with the control plane's own replica key
(:attr:`DeploymentService.replica_key`, whose hash is in every token file it writes).

The figures are pure functions of two scrapes (:func:`summarise`): requests per second from
the counters' growth since the previous scrape of the same replica processes, p50/p99 latency
and batch sizes from the histograms' growth (from the totals on a first look), quantiles
interpolated within buckets as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nimbus.errors import InvalidInput, NimbusError, PayloadTooLarge, Unavailable
from nimbus.wire.deployments import Deployment, Replica

REQUESTS = "nimbus_inference_requests"
LATENCY = "nimbus_inference_request_seconds"
BATCH = "nimbus_inference_batch_size"
QUEUE = "nimbus_inference_queue_depth"
SCRAPE_TIMEOUT = 2.0
TRY_TIMEOUT = 60.0
MAX_TRY_BYTES = 8 * 1024 * 1024  # an image sent to Try it (the replica has its own limits)
MAX_TRY_TEXT = 20_000  # characters


@dataclass
class Sample:
    """One replica's figures at one moment: counters and cumulative histogram buckets."""

    at: float
    requests: float = 0.0
    errors: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)  # upper bound -> count
    batches: dict[float, float] = field(default_factory=dict)
    batch_sum: float = 0.0
    batch_count: float = 0.0
    queue: float = 0.0


@dataclass
class Figures:
    """What the metrics panel shows for a deployment."""

    replicas_scraped: int
    unreachable: list[int]
    requests: float  # in all, since the replicas started
    per_second: float | None  # None on a first look
    p50_ms: float | None
    p99_ms: float | None
    mean_batch: float | None
    batch_buckets: list[tuple[str, float]]  # ("<= 8", count) over the window
    queue: float
    window_s: float | None


def parse(text: str, at: float) -> Sample:
    """A replica's ``/metrics`` text, summed over routes and statuses."""
    sample = Sample(at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{REQUESTS}_total":
                sample.requests += s.value
                if s.labels.get("status", "200")[:1] in ("4", "5"):
                    sample.errors += s.value
            elif s.name == f"{LATENCY}_bucket":
                bound = float(s.labels["le"])
                sample.latency[bound] = sample.latency.get(bound, 0.0) + s.value
            elif s.name == f"{BATCH}_bucket":
                bound = float(s.labels["le"])
                sample.batches[bound] = sample.batches.get(bound, 0.0) + s.value
            elif s.name == f"{BATCH}_sum":
                sample.batch_sum += s.value
            elif s.name == f"{BATCH}_count":
                sample.batch_count += s.value
            elif s.name == QUEUE:
                sample.queue += s.value
    return sample


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound -> count), interpolated
    linearly within its bucket; the largest finite bound if it falls in ``+Inf``; None when
    empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _minus(now: Mapping[float, float], before: Mapping[float, float]) -> dict[float, float]:
    return {b: now[b] - before.get(b, 0.0) for b in now}


def summarise(
    now: Mapping[int, Sample], before: Mapping[int, Sample], unreachable: Sequence[int] = ()
) -> Figures:
    """The panel's figures from this scrape (``now``: pid -> sample) and the previous one
    of the same processes (a replica restarted, or a counter that went down, counts from
    zero)."""
    latency: dict[float, float] = {}
    batches: dict[float, float] = {}
    requests = grown = batch_sum = batch_count = queue = 0.0
    windows: list[float] = []
    for pid, sample in now.items():
        old = before.get(pid)
        if old is not None and (old.requests > sample.requests or old.at >= sample.at):
            old = None
        requests += sample.requests
        queue += sample.queue
        base = old or Sample(sample.at)
        if old is not None:
            windows.append(sample.at - old.at)
            grown += sample.requests - old.requests
        for into, values in (
            (latency, _minus(sample.latency, base.latency)),
            (batches, _minus(sample.batches, base.batches)),
        ):
            for bound, count in values.items():
                into[bound] = into.get(bound, 0.0) + count
        batch_sum += sample.batch_sum - base.batch_sum
        batch_count += sample.batch_count - base.batch_count
    window = max(windows) if windows else None
    p50, p99 = quantile(0.5, latency), quantile(0.99, latency)
    shown, below = [], 0.0
    for bound in sorted(batches):
        count = batches[bound] - below
        below = batches[bound]
        if count > 0:
            shown.append(("more" if math.isinf(bound) else f"\u2264 {bound:g}", count))
    return Figures(
        replicas_scraped=len(now),
        unreachable=list(unreachable),
        requests=requests,
        per_second=grown / window if window else None,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
        mean_batch=batch_sum / batch_count if batch_count > 0 else None,
        batch_buckets=shown,
        queue=queue,
        window_s=window,
    )


class Scrapes:
    """The last sample of each replica process the console looked at (bounded), so that
    the next look shows rates over the time between the two."""

    def __init__(self, limit: int = 1024) -> None:
        self._last: OrderedDict[tuple[str, str, int], Sample] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def exchange(self, key: tuple[str, str], samples: Mapping[int, Sample]) -> dict[int, Sample]:
        """Store ``samples`` (pid -> sample) of deployment ``key``; return the previous ones."""
        with self._lock:
            before = {}
            for pid, sample in samples.items():
                old = self._last.pop((*key, pid), None)
                if old is not None:
                    before[pid] = old
                self._last[(*key, pid)] = sample
            while len(self._last) > self._limit:
                self._last.popitem(last=False)
            return before


SCRAPES = Scrapes()


def _host_of(deployment: Deployment) -> str:
    """Where the replicas listen: the host of the deployment's endpoint."""
    host = urlsplit(deployment.endpoint or "http://127.0.0.1").hostname or "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def scrape(tenant: str, deployment: Deployment, key: str) -> Figures:
    """Scrape every ready replica's ``/metrics`` (on its private port), all at once, and
    sum up: a replica that does not answer within the timeout is named, not waited for."""
    host = _host_of(deployment)
    targets = [r for r in deployment.replicas if r.port and r.pid and r.state == "ready"]
    samples: dict[int, Sample] = {}
    unreachable: list[int] = []
    with httpx.Client(timeout=SCRAPE_TIMEOUT, headers=_auth(key)) as http:

        def one(replica: Replica) -> Sample | None:
            try:
                response = http.get(f"http://{host}:{replica.port}/metrics")
                response.raise_for_status()
                return parse(response.text, time.monotonic())
            except (httpx.HTTPError, ValueError):
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(targets)))) as pool:
            for replica, sample in zip(targets, pool.map(one, targets), strict=True):
                if sample is None:
                    unreachable.append(replica.index)
                else:
                    samples[int(replica.pid or 0)] = sample
    before = SCRAPES.exchange((tenant, deployment.name), samples)
    return summarise(samples, before, unreachable)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Tried:
    """Try it's answer: the prediction and, where the replica explains, why."""

    label: str
    probabilities: list[tuple[str, float]]  # highest first
    overlay_png: str | None = None  # base64
    words: list[tuple[str, float]] = field(default_factory=list)
    method: str | None = None
    explain_error: str | None = None


def try_it(
    deployment: Deployment, key: str, *, image: bytes | None = None, text: str | None = None
) -> Tried:
    """Predict on an image or a text through the deployment's endpoint, then explain it
    (an image's heat map as a PNG overlay, a text's word scores); an explanation the
    replica refuses leaves the prediction shown with the reason."""
    if deployment.endpoint is None:
        raise Unavailable(f"deployment {deployment.name!r} has no endpoint yet")
    if image is not None and len(image) > MAX_TRY_BYTES:
        raise PayloadTooLarge(f"the image is above {MAX_TRY_BYTES // (1024 * 1024)} MiB")
    if text is not None and len(text) > MAX_TRY_TEXT:
        raise PayloadTooLarge(f"the text is above {MAX_TRY_TEXT} characters")
    base = f"{deployment.endpoint.rstrip('/')}/v2/models/{deployment.name}"
    content: dict[str, Any] = (
        {"content": image, "headers": {"Content-Type": "application/octet-stream"}}
        if image is not None
        else {"json": {"text": text}}
    )
    with httpx.Client(timeout=TRY_TIMEOUT, headers=_auth(key)) as http:
        answer = _call(http, f"{base}/predict", content)
        tried = Tried(
            label=str(answer.get("label")),
            probabilities=_ranked(answer.get("probabilities") or {}),
        )
        explain = f"{base}/explain" + ("?overlay=true" if image is not None else "")
        try:
            why = _call(http, explain, content)
        except NimbusError as exc:
            tried.explain_error = exc.message
            return tried
    tried.method = str(why.get("method") or "") or None
    png = why.get("overlay_png")
    tried.overlay_png = png if isinstance(png, str) else None
    tried.words = [(str(w), float(s)) for w, s in _pairs(why.get("words"))]
    return tried


def _pairs(value: Any) -> Iterable[tuple[Any, Any]]:
    if not isinstance(value, list):
        return []
    return [(p[0], p[1]) for p in value if isinstance(p, list | tuple) and len(p) == 2]


def _ranked(probabilities: Any) -> list[tuple[str, float]]:
    if not isinstance(probabilities, dict):
        return []
    pairs = [(str(k), float(v)) for k, v in probabilities.items()]
    return sorted(pairs, key=lambda kv: -kv[1])


def _call(http: httpx.Client, url: str, content: dict[str, Any]) -> dict[str, Any]:
    """POST to a replica; its refusal (a bad image, 413, ...) becomes the same error here,
    with the replica's own message."""
    try:
        response = http.post(url, **content)
    except httpx.TransportError as exc:
        raise Unavailable(f"the deployment did not answer: {exc}") from None
    if response.is_error:
        raise _replica_error(response)
    try:
        answer = response.json()
    except ValueError:
        raise Unavailable("the deployment answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise Unavailable("the deployment answered something that is not a JSON object")
    return answer


def _replica_error(response: httpx.Response) -> NimbusError:
    try:
        body = response.json()
        message = body.get("error") if isinstance(body, dict) else None
        if isinstance(message, dict):
            message = message.get("message")
    except ValueError:
        message = None
    text = str(message or response.text[:300] or response.reason_phrase)
    if response.status_code == 413:
        return PayloadTooLarge(f"the deployment refused it as too large: {text}")
    if 400 <= response.status_code < 500:
        return InvalidInput(f"the deployment refused it: {text}")
    return Unavailable(f"the deployment failed ({response.status_code}): {text}")
