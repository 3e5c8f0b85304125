"""The job process's side of the job API (docs/api.md): :class:`JobApiClient`, and
:class:`HttpReporter`, the trainer's :class:`~nimbus.runtime.reporter.Reporter` over it.

Everything a job does with the control plane goes through here, over HTTP with the
job-scoped token, so a job runs unchanged on a remote node. A sandboxed job has no network
but its own loopback: its ``NIMBUS_URL`` is ``unix:PATH``, the control plane's job API
socket bound into its sandbox. Failures are sorted once:

- connection errors, timeouts and 5xx answers are retried with backoff for up to
  ``retry_seconds`` (a restarting control plane must not kill a running job); after that the
  job stops with :class:`ControlPlaneUnavailable`. Progress and heartbeats are best effort: one
  try, no retry, never an error.
- 409 means this attempt was replaced (fenced): :class:`AttemptFenced`, at once.
- other 4xx are bugs or bad input: the matching :class:`~nimbus.errors.NimbusError`.

:class:`JobStop` and its subclasses derive from ``BaseException`` so that a user script's
``except Exception`` cannot swallow the end of its own attempt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import random
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import httpx

from nimbus.errors import CorruptBlob, InvalidInput, NimbusError, error_from_response
from nimbus.ranges import WRITE_SIZE
from nimbus.runtime.checkpoints import FrozenCheckpoint, checkpoint_from_bytes, freeze
from nimbus.runtime.sender import ReportSender
from nimbus.ticker import Ticker
from nimbus.wire.job_api import AttemptSpec, HeartbeatReply

FENCED_EXIT_CODE = 75  # EX_TEMPFAIL: this attempt was replaced; its successor carries on
CANCELLED_EXIT_CODE = 76  # the job was cancelled while it ran
UNAVAILABLE_EXIT_CODE = 69  # EX_UNAVAILABLE: the control plane stayed out of reach

# A blob key, tenant-scoped (``tenants/<id>/``) where the server encrypts blobs at rest.
BLOB_KEY_RE = re.compile(r"^(?:tenants/[1-9][0-9]{0,18}/)?sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
BEST_EFFORT_TIMEOUT = 5.0  # a hung control plane must not stall training on a progress call
_CHUNK = WRITE_SIZE  # written to the cache this much at a time (nimbus.ranges)
UNIX_SCHEME = "unix:"
T = TypeVar("T")
UNIX_HOST = "http://nimbus"  # the Host header of requests over a unix socket


class JobStop(BaseException):
    """Ends the job process with :attr:`exit_code` (never caught by ``except Exception``)."""

    exit_code: ClassVar[int] = 1


class AttemptFenced(JobStop):
    """The control plane answered 409: another attempt of this job is the current one."""

    exit_code = FENCED_EXIT_CODE


class CancelRequested(JobStop):
    """A heartbeat said the job was cancelled."""

    exit_code = CANCELLED_EXIT_CODE


class ControlPlaneUnavailable(JobStop):
    """The control plane could not be reached for the whole retry window."""

    exit_code = UNAVAILABLE_EXIT_CODE


class _Transient(Exception):
    """One failed try that is worth repeating."""


class JobApiClient:
    """The job API of one attempt, authenticated with its job token.

    ``cache_dir`` holds downloaded blobs by content hash, shared by the workers of a node.
    ``sleep`` and ``clock`` are injectable so retry loops can be tested step by step.
    """

    def __init__(
        self,
        url: str,
        attempt_id: str,
        token: str,
        *,
        cache_dir: Path,
        retry_seconds: float = 60.0,
        timeout: float = 60.0,
        progress_interval: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if url.startswith(UNIX_SCHEME):  # HTTP over the unix socket at that path
            if transport is None:
                transport = httpx.HTTPTransport(uds=url[len(UNIX_SCHEME) :])
            url = UNIX_HOST
        base = f"{url.rstrip('/')}/api/v1/job-api/{quote(attempt_id, safe='')}"
        self._http = httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )
        self.cache_dir = Path(cache_dir)
        self.retry_seconds = retry_seconds
        # A progress post is a request made from inside the training loop: once a second
        # keeps its cost (a few ms here, and the server's work) far below 1% of the time.
        self.progress_interval = progress_interval
        self._sleep, self._clock = sleep, clock
        self._last_progress = -math.inf
        # what the training loop reports (HttpReporter) is posted from a background thread
        self.reports = ReportSender(self.metrics, self.post_progress)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the routes ----------------------------------------------------------------------

    def spec(self) -> AttemptSpec:
        """The attempt's spec: model, params, seed, workers, dataset version, code."""
        return AttemptSpec.model_validate(self._request("GET", "spec").json())

    def heartbeat(self) -> bool:
        """Best effort; True when the job was cancelled (False if the call failed)."""
        response = self._try("POST", "heartbeat")
        if response is None:
            return False
        try:
            return HeartbeatReply.model_validate(response.json()).cancel
        except ValueError:  # not JSON, or not a heartbeat reply (ValidationError is one)
            return False

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._request("POST", "metrics", json={"step": int(step), "metrics": metrics})

    def progress(self, epoch: int, epochs: int, batch: int, batches: int) -> None:
        """Best effort, at most one call per ``progress_interval`` (the last batch always)."""
        if self.progress_due(batch, batches):
            self.post_progress(progress_body(epoch, epochs, batch, batches))

    def progress_due(self, batch: int, batches: int) -> bool:
        """Whether a progress report is due (one per ``progress_interval``, and the last
        batch of an epoch); counts it as made when it is."""
        now = self._clock()
        if batch < batches and now - self._last_progress < self.progress_interval:
            return False
        self._last_progress = now
        return True

    def post_progress(self, body: dict[str, Any]) -> None:
        """Post one progress report now (best effort: a 409 still fences)."""
        self._try("POST", "progress", json=body)

    def put_checkpoint(self, step: int, data: bytes, epoch: int | None = None) -> None:
        params = {"epoch": int(epoch)} if epoch is not None else None
        self._request("PUT", f"checkpoints/{int(step)}", content=data, params=params)

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        """The job's latest complete checkpoint (any attempt's) as (step, bytes), or None.

        Read through the node's cache like any input (:meth:`blob`): a retried attempt's
        node fetched it from the bucket ahead of the job where the store allows it."""
        response = self._request("GET", "checkpoints/latest/ref", allow_404=True)
        if response.status_code == 404:
            return None
        ref = response.json()
        return int(ref["step"]), self.blob(str(ref["key"])).read_bytes()

    def put_artifact(self, name: str, data: bytes) -> None:
        self._request("PUT", f"artifacts/{quote(name, safe='')}", content=data)

    def result(self, evaluation: dict[str, Any]) -> None:
        self._request("POST", "result", json={"evaluation": evaluation})

    def blob(self, key: str) -> Path:
        """The local path of blob ``key``, downloaded into the cache unless already there.

        Written to a temporary name, checked against its hash, fsynced, then renamed, under
        a lock file, so workers sharing the cache download each blob once and never read a
        partial file. A cached file is hashed again before every reuse: one that no longer
        matches (the cache was written to, or the disk corrupted it) is replaced by a fresh
        download. Each reuse marks the file used (its mtime), which the server's sweep of
        the caches reads as recency (:mod:`nimbus.jobs.cache`).
        """
        match = BLOB_KEY_RE.match(key)
        if not match or not match.group(2).startswith(match.group(1)):
            raise InvalidInput(f"not a blob key: {key!r}")
        digest = match.group(2)
        # The cache is the tenant's own: a blob's place in it is its content hash alone.
        path = self.cache_dir / "sha256" / match.group(1) / digest
        if _cached(path, digest):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path.with_name(path.name + ".lock")):
            if not _cached(path, digest):
                self._retrying(f"GET blobs/{key}", lambda: self._download(key, path))
        return path

    # -- plumbing ------------------------------------------------------------------------

    def _once(
        self, method: str, path: str, allow_404: bool = False, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        return _checked(response, allow_404)

    def _request(
        self, method: str, path: str, *, allow_404: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One call, retried while the control plane is out of reach."""
        return self._retrying(
            f"{method} {path}", lambda: self._once(method, path, allow_404, **kwargs)
        )

    def _try(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One try, for calls whose loss does not matter; a 409 still fences."""
        try:
            return self._once(method, path, timeout=BEST_EFFORT_TIMEOUT, **kwargs)
        except (_Transient, NimbusError):
            return None

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        deadline: float | None = None
        delay = 0.2
        while True:
            try:
                return call()
            except _Transient as exc:
                now = self._clock()
                deadline = now + self.retry_seconds if deadline is None else deadline
                if now >= deadline:
                    raise ControlPlaneUnavailable(
                        f"the control plane did not answer {what} for {self.retry_seconds:.0f} s: "
                        f"{exc}"
                    ) from None
                self._sleep(min(delay * random.uniform(0.5, 1.0), deadline - now))
                delay = min(delay * 2, 5.0)

    def _download(self, key: str, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", f"blobs/{key}") as response:
                if response.status_code >= 300:
                    response.read()
                    _checked(response, allow_404=False)
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    # Read-only for every uid: the tenant's other attempts share this cache
                    # (its group) and must not write into a blob a running job has mapped.
                    os.fchmod(out.fileno(), CACHED_MODE)
                    os.fsync(out.fileno())
            if digest.hexdigest() != key.rsplit("/", 1)[1]:
                raise CorruptBlob(f"blob {key} arrived with another content hash")
            os.replace(tmp, path)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)


def progress_body(epoch: int, epochs: int, batch: int, batches: int) -> dict[str, int]:
    return {"epoch": epoch, "epochs": epochs, "batch": batch, "batches": batches}


def _checked(response: httpx.Response, allow_404: bool) -> httpx.Response:
    """The response if it succeeded; raises what its status means otherwise."""
    status = response.status_code
    if status < 300 or (allow_404 and status == 404):
        return response
    try:
        body = response.json()
    except ValueError:
        body = None
    if status == 409:
        raise AttemptFenced(f"this attempt was replaced: {_message(body, status)}")
    if status >= 500 or status == 429:
        error = error_from_response(status, body)
        if isinstance(error, CorruptBlob):
            raise error  # the stored bytes are bad: asking again will not help
        raise _Transient(f"HTTP {status}: {_message(body, status)}")
    raise error_from_response(status, body)


CACHED_MODE = 0o444  # a downloaded blob in the cache


def _message(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))
    return f"HTTP {status}"


def _cached(path: Path, digest: str) -> bool:
    """Whether ``path`` is a regular file (not a symlink) whose SHA-256 is ``digest``; marks
    it used when it is. A file that does not match is removed."""
    try:
        # O_NONBLOCK: a FIFO planted in its place must not hang the job (no effect on files)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:  # a symlink (ELOOP) or another thing that is no cached blob
        path.unlink(missing_ok=True)
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            ok = False
        else:
            ok = hashlib.file_digest(f, "sha256").hexdigest() == digest
    if not ok:
        print(
            f"nimbus: the cached copy of blob {digest[:12]} does not match its hash; "
            "downloading it again",
            file=sys.stderr,
            flush=True,
        )
        path.unlink(missing_ok=True)
        return False
    with contextlib.suppress(OSError):  # recency for the cache's sweep; best effort
        os.utime(path)
    return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Heartbeat:
    """Posts a heartbeat every ``interval`` seconds from a daemon thread while in its block.

    When the job was cancelled or the attempt fenced, the main thread may be deep in a
    training step or in user code, so ``on_stop`` is called from the heartbeat thread (the
    job entry point ends the process there and then).
    """

    def __init__(
        self, client: JobApiClient, interval: float, on_stop: Callable[[JobStop], None]
    ) -> None:
        self.client, self.interval, self.on_stop = client, interval, on_stop
        self._ticker = Ticker("nimbus-heartbeat", interval, self._beat, join_timeout=5.0)

    def __enter__(self) -> Heartbeat:
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ticker.stop()

    def _beat(self) -> None:
        try:
            if self.client.heartbeat():
                raise CancelRequested("the job was cancelled")
        except JobStop as stop:
            if not self._ticker.stopping:  # the block is not over yet
                self._ticker.stop()  # from its own round: no heartbeat after this one
                self.on_stop(stop)


class HttpReporter:
    """A :class:`~nimbus.runtime.reporter.Reporter` over the job API.

    Only rank 0 reports (``log``, ``progress``, ``save_checkpoint``); every rank may load.
    ``log`` also prints one human-readable line per step (it becomes the job log).

    Nothing the training thread reports waits for the control plane: metrics and progress
    go through the client's :class:`~nimbus.runtime.sender.ReportSender` (every metric, in
    order; the latest progress), and a checkpoint's tensors are copied at once (the caller
    may go on changing them) but encoded and uploaded in a background thread: one upload at
    a time, in order. :meth:`flush` waits for all of it and raises what a post raised (a
    fenced attempt, say); the next save and every load wait for the upload in flight, and
    the job flushes before it ends.
    """

    def __init__(
        self,
        client: JobApiClient,
        *,
        rank: int = 0,
        label: str = "step",
        total_steps: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.client, self.rank, self.label = client, rank, label
        self.total_steps, self.echo = total_steps, echo or _print_line
        self.last_step = 0  # of the latest checkpoint saved or loaded
        self._upload: threading.Thread | None = None
        self._upload_error: BaseException | None = None

    def log(self, step: int, **metrics: float) -> None:
        if self.rank:
            return
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        if finite:
            self.client.reports.metrics(step, finite)
        self.echo(format_metrics(self.label, step, self.total_steps, metrics))

    def progress(self, epoch: int, total_epochs: int, batch: int, total_batches: int) -> None:
        if not self.rank and self.client.progress_due(batch, total_batches):
            body = progress_body(epoch, total_epochs, batch, total_batches)
            self.client.reports.progress(body)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.rank:
            return
        epoch = state.get("epoch")
        step = epoch if isinstance(epoch, int) and epoch > 0 else self.last_step + 1
        self.save_at(step, state)

    def save_at(self, step: int, state: dict[str, Any]) -> None:
        """Store ``state`` as the checkpoint of ``step`` (rank 0 only)."""
        if self.rank:
            return
        epoch = state.get("epoch")
        epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
        frozen = freeze(state)  # copied before the caller's next step changes it
        self._wait_upload()
        self._upload = threading.Thread(
            target=self._put, args=(step, frozen, epoch), name="checkpoint-upload", daemon=True
        )
        self._upload.start()
        self.last_step = step

    def _put(self, step: int, frozen: FrozenCheckpoint, epoch: int | None) -> None:
        try:
            self.client.put_checkpoint(step, frozen.to_bytes(), epoch)
        except BaseException as exc:  # JobStop included: raised in the caller's thread
            self._upload_error = exc

    def _wait_upload(self) -> None:
        """Wait for the checkpoint upload in flight, if any; raise what it raised."""
        if self._upload is not None:
            self._upload.join()
            self._upload = None
        if self._upload_error is not None:
            error, self._upload_error = self._upload_error, None
            raise error

    def flush(self) -> None:
        """Wait until the metrics, progress and checkpoint handed over are stored; raise
        what storing them raised."""
        try:
            self.client.reports.flush()
        finally:
            self._wait_upload()

    def load_checkpoint(self) -> dict[str, Any] | None:
        self._wait_upload()
        found = self.client.latest_checkpoint()
        if found is None:
            return None
        step, data = found
        self.last_step = step
        if not self.rank:
            self.echo(f"resuming from the checkpoint of {self.label} {step}")
        return checkpoint_from_bytes(data)


def _print_line(line: str) -> None:
    print(line, flush=True)


def format_metrics(label: str, step: int, total: int | None, metrics: dict[str, float]) -> str:
    """``epoch 3/5  train_loss 0.2345  train_accuracy 0.9123``: one job log line."""
    head = f"{label} {step}/{total}" if total else f"{label} {step}"
    return "  ".join([head, *(f"{k} {float(v):.4g}" for k, v in metrics.items())])
