"""Dynamic batching: a pure policy that picks the next batch, and an asyncio driver around it.

The policy never makes a lone request wait: when no batch is in flight, whatever is queued
goes at once. Requests accumulate only while the inference worker is busy, which is exactly
when waiting costs nothing; with several inference workers, a free one waits up to
``max_delay`` for a batch to fill while another is busy. The driver runs batches off the
event loop in worker threads, concatenating the requests' rows and splitting the outputs back
to each caller. Except when that costs more than it saves: a batch of a model so fast that
recent batches took under :data:`INLINE_SECONDS`, and less than the recent hand-offs to the
worker and back took (two wake-ups, each a scheduling delay; milliseconds on a busy machine,
tens of microseconds with a core free), runs on the event loop itself. One batch in
:data:`PROBE_EVERY` still goes to the worker, so the hand-off's cost stays measured; one in
more when the hand-off costs many batches (see :func:`probe_every`), so that the probes, each
of which delays its batch by a hand-off, never cost the requests more than a few percent.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from nimbus.errors import Unavailable
from nimbus.serving.errors import Overloaded

# Batches whose recent run time (wall clock: a backend that waits, on a GPU say, blocks the
# loop as long) averages at most this run on the event loop itself.
INLINE_SECONDS = 0.002
PROBE_EVERY = 16
MAX_PROBE_EVERY = 1024


def probe_every(batch_seconds: float, handoff_seconds: float) -> int:
    """How many inline batches per probe batch sent to the worker: :data:`PROBE_EVERY`, times
    as many batches as one hand-off costs (up to :data:`MAX_PROBE_EVERY`). A probe delays its
    batch by a hand-off, so on average probing costs at most 1/PROBE_EVERY of a batch's time,
    however slow hand-offs get on a busy machine (and it stays out of the p99 there)."""
    ratio = handoff_seconds / batch_seconds if batch_seconds > 0 else MAX_PROBE_EVERY
    return max(PROBE_EVERY, min(MAX_PROBE_EVERY, int(PROBE_EVERY * ratio)))


class Queued(Protocol):
    """What the policy knows of a queued request."""

    @property
    def rows(self) -> int: ...

    @property
    def enqueued_at(self) -> float: ...


@dataclass(frozen=True)
class Decision:
    """Dispatch the first ``take`` queued requests now; or, when ``take`` is 0, ask again after
    ``wait`` seconds (None: only when something changes: an arrival or a finished batch)."""

    take: int
    wait: float | None = None


class BatchPolicy:
    """Decides which queued requests form the next batch. Pure: time is passed in."""

    def __init__(self, max_batch_size: int, max_delay: float, max_in_flight: int = 1) -> None:
        if max_batch_size < 1 or max_delay < 0 or max_in_flight < 1:
            raise ValueError("max_batch_size and max_in_flight must be >= 1, max_delay >= 0")
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.max_in_flight = max_in_flight

    def decide(self, queue: Sequence[Queued], now: float, in_flight: int) -> Decision:
        """The next step for a FIFO ``queue`` given ``in_flight`` batches running."""
        if not queue or in_flight >= self.max_in_flight:
            return Decision(0)
        take, rows = 0, 0
        for item in queue:
            if take and rows + item.rows > self.max_batch_size:
                break
            take += 1
            rows += item.rows
        # A request larger than a whole batch still goes, alone.
        full = take < len(queue) or rows >= self.max_batch_size
        if full or in_flight == 0:
            return Decision(take)
        deadline = queue[0].enqueued_at + self.max_delay
        if now >= deadline:
            return Decision(take)
        return Decision(0, deadline - now)


@dataclass(slots=True)
class _Item:
    rows: int
    enqueued_at: float
    inputs: np.ndarray
    future: asyncio.Future[np.ndarray] = field(repr=False)


class Batcher:
    """Runs ``run`` over batches of submitted arrays (rows on axis 0) on worker threads.

    ``run`` maps a batch of inputs to a batch of outputs with as many rows, and never sees more
    than ``max_batch_size`` rows at once (a larger request runs in slices). The queue holds at
    most ``max_queued_rows`` rows; beyond that :meth:`submit` raises :class:`Overloaded`.

    There is no batching task: the policy is consulted on the event loop whenever something
    changes (an arrival, a finished batch, a delay running out), and batches go to the worker
    threads through a queue, their results coming back with one ``call_soon_threadsafe``.
    A request costs the loop a future and a policy decision, nothing more.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        policy: BatchPolicy,
        *,
        max_queued_rows: int,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int], None] | None = None,
        inline_seconds: float = INLINE_SECONDS,
    ) -> None:
        self._run = run
        self._inline_seconds = inline_seconds
        # Moving average of recent batches' run time (None before the first).
        self._batch_seconds: float | None = None
        # Moving average of the wait between queuing a batch for the worker and its start,
        # plus that between its end and the loop taking the results back.
        self._handoff_seconds: float | None = None
        self._inline_runs = 0
        self._policy = policy
        self._max_queued_rows = max_queued_rows
        self._clock = clock
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: queue.SimpleQueue[tuple[list[_Item], float] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._timer: asyncio.TimerHandle | None = None
        self._pump_due = False
        self._closed = False

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch (not counting batches in flight)."""
        return self._queued_rows

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._closed

    def start(self) -> None:
        """Start the worker threads, bound to the running event loop (idempotent)."""
        if self._closed:
            raise Unavailable("the batcher is closed")
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        for i in range(self._policy.max_in_flight):
            # Daemons: a batcher nobody closed must not keep the process alive at exit.
            worker = threading.Thread(
                target=self._work, name=f"nimbus-infer_{i}", args=(self._loop,), daemon=True
            )
            worker.start()
            self._workers.append(worker)

    async def close(self) -> None:
        """Stop batching; queued requests fail with :class:`Unavailable`."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable("the server is shutting down"))
        self._queued_rows = 0
        for _ in self._workers:
            self._batches.put(None)

    async def submit(self, inputs: np.ndarray) -> np.ndarray:
        """Queue ``inputs`` for the next batch and wait for its rows of output."""
        return await self.enqueue(inputs)

    def enqueue(self, inputs: np.ndarray) -> asyncio.Future[np.ndarray]:
        """Queue ``inputs`` for the next batch; the future gets its rows of output. For
        callers on the event loop that are not coroutines (see :mod:`nimbus.serving.fastpath`).
        """
        loop = self._loop
        if loop is None or self._closed:
            self.start()
            loop = asyncio.get_running_loop()
        rows = int(inputs.shape[0])
        if self._queue and self._queued_rows + rows > self._max_queued_rows:
            raise Overloaded(
                f"the inference queue is full ({self._queued_rows} rows waiting); retry later"
            )
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append(_Item(rows, self._clock(), inputs, future))
        self._queued_rows += rows
        if not self._pump_due:
            # Decided once the loop has run what is ready now: requests that arrived together
            # go together, and an idle worker still gets a lone request at once.
            self._pump_due = True
            loop.call_soon(self._pump)
        return future

    def _pump(self) -> None:
        """Dispatch every batch the policy allows now; arm a timer if it says to wait."""
        self._pump_due = False
        while not self._closed:
            decision = self._policy.decide(self._queue, self._clock(), self._in_flight)
            if not decision.take:
                if decision.wait is not None and self._timer is None:
                    assert self._loop is not None
                    self._timer = self._loop.call_later(decision.wait, self._expired)
                return
            items = [self._queue.popleft() for _ in range(decision.take)]
            self._queued_rows -= sum(item.rows for item in items)
            live = [item for item in items if not item.future.done()]
            if not live:
                continue
            self._in_flight += 1
            if self._inline():
                started = time.perf_counter()
                try:
                    outputs, error = self._run_batch(live), None
                except Exception as exc:
                    outputs, error = None, exc
                self._settle(live, outputs, error, time.perf_counter() - started)
            else:
                self._batches.put((live, time.perf_counter()))

    def _inline(self) -> bool:
        """Whether the next batch runs on the event loop (see the module doc)."""
        cost, handoff = self._batch_seconds, self._handoff_seconds
        if cost is None or handoff is None or cost > min(handoff, self._inline_seconds):
            return False
        self._inline_runs += 1
        if self._inline_runs < probe_every(cost, handoff):
            return True
        self._inline_runs = 0
        return False

    def _expired(self) -> None:
        self._timer = None
        self._pump()

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        """A worker thread: run batches until a None arrives."""
        while True:
            job = self._batches.get()
            if job is None:
                return
            items, queued = job
            outputs: np.ndarray | None = None
            error: BaseException | None = None
            started = time.perf_counter()
            try:
                outputs = self._run_batch(items)
            except Exception as exc:
                error = exc
            ended = time.perf_counter()
            waited = started - queued
            try:
                loop.call_soon_threadsafe(
                    self._finish, items, outputs, error, ended - started, waited, ended
                )
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _run_batch(self, items: list[_Item]) -> np.ndarray:
        if len(items) == 1:
            batch = items[0].inputs
        else:
            batch = np.concatenate([item.inputs for item in items])
        if self._on_batch is not None:
            self._on_batch(int(batch.shape[0]))
        size = self._policy.max_batch_size
        if batch.shape[0] > size:
            # An oversized request runs in slices of a batch: the runtime's working memory
            # (activations, its arena) stays that of one full batch whatever the request.
            outputs = np.concatenate(
                [self._run(batch[i : i + size]) for i in range(0, batch.shape[0], size)]
            )
        else:
            outputs = self._run(batch)
        if outputs.shape[0] != batch.shape[0]:
            raise RuntimeError(f"the model returned {outputs.shape[0]} rows for {batch.shape[0]}")
        return outputs

    def _finish(
        self,
        items: list[_Item],
        outputs: np.ndarray | None,
        error: BaseException | None,
        took: float,
        waited: float,
        ended: float,
    ) -> None:
        handoff = waited + time.perf_counter() - ended
        last = self._handoff_seconds
        self._handoff_seconds = handoff if last is None else last + 0.2 * (handoff - last)
        self._settle(items, outputs, error, took)
        self._pump()

    def _settle(
        self,
        items: list[_Item],
        outputs: np.ndarray | None,
        error: BaseException | None,
        took: float,
    ) -> None:
        """Hand a finished batch's rows (or its error) to the callers."""
        self._in_flight -= 1
        if error is None:
            # Clipped: one batch preempted for a while on a busy machine moves the average
            # less than a model that is slow every time.
            took = min(took, 2 * self._inline_seconds)
            last = self._batch_seconds
            self._batch_seconds = took if last is None else last + 0.2 * (took - last)
        if outputs is not None:
            start = 0
            for item in items:
                end = start + item.rows
                if not item.future.done():
                    item.future.set_result(outputs[start:end])
                start = end
        else:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error or Unavailable("the server is shutting down"))
