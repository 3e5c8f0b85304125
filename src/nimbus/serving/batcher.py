"""Dynamic batching: a pure policy that picks the next batch, and an asyncio driver around it.

The policy never makes a lone request wait: when no batch is in flight, whatever is queued
goes at once. Requests accumulate only while the inference worker is busy, which is exactly
when waiting costs nothing; with several inference workers, a free one waits up to
``max_delay`` for a batch to fill while another is busy. The driver runs batches off the
event loop in worker threads, concatenating the requests' rows and splitting the outputs back
to each caller.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from nimbus.errors import Unavailable
from nimbus.serving.errors import Overloaded


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


@dataclass
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
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        policy: BatchPolicy,
        *,
        max_queued_rows: int,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._policy = policy
        self._max_queued_rows = max_queued_rows
        self._clock = clock
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
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
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the batching task on the running event loop (idempotent)."""
        if self._closed:
            raise Unavailable("the batcher is closed")
        if self.running:
            return
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=self._policy.max_in_flight, thread_name_prefix="nimbus-infer"
        )
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="nimbus-batcher")

    async def close(self) -> None:
        """Stop batching; queued requests fail with :class:`Unavailable`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable("the server is shutting down"))
        self._queued_rows = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, inputs: np.ndarray) -> np.ndarray:
        """Queue ``inputs`` for the next batch and wait for its rows of output."""
        if not self.running:
            self.start()
        rows = int(inputs.shape[0])
        if self._queue and self._queued_rows + rows > self._max_queued_rows:
            raise Overloaded(
                f"the inference queue is full ({self._queued_rows} rows waiting); retry later"
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(rows, self._clock(), inputs, future))
        self._queued_rows += rows
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        wake = self._wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        while True:
            wake.clear()
            decision = self._policy.decide(self._queue, self._clock(), self._in_flight)
            if decision.take:
                items = [self._queue.popleft() for _ in range(decision.take)]
                self._queued_rows -= sum(item.rows for item in items)
                live = [item for item in items if not item.future.done()]
                if not live:
                    continue
                self._in_flight += 1
                done = loop.run_in_executor(self._executor, self._run_batch, live)
                done.add_done_callback(functools.partial(self._finish, live))
            elif decision.wait is None:
                await wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), decision.wait)

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

    def _finish(self, items: list[_Item], done: asyncio.Future[np.ndarray]) -> None:
        self._in_flight -= 1
        assert self._wake is not None
        self._wake.set()
        if done.cancelled():
            error: BaseException = Unavailable("the server is shutting down")
        else:
            error_or_none = done.exception()
            if error_or_none is None:
                self._deliver(items, done.result())
                return
            error = error_or_none
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    @staticmethod
    def _deliver(items: list[_Item], outputs: np.ndarray) -> None:
        start = 0
        for item in items:
            end = start + item.rows
            if not item.future.done():
                item.future.set_result(outputs[start:end])
            start = end
