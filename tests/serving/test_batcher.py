"""Dynamic batching: the pure policy step by step, then the asyncio driver with a real thread."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from nimbus.errors import Unavailable
from nimbus.serving.batcher import (
    INLINE_SECONDS,
    MAX_PROBE_EVERY,
    PROBE_EVERY,
    Batcher,
    BatchPolicy,
    Decision,
    probe_every,
)
from nimbus.serving.errors import Overloaded


@dataclass
class Req:
    rows: int
    enqueued_at: float


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_empty_queue_waits_for_an_arrival() -> None:
    assert BatchPolicy(8, 0.002).decide([], 0.0, in_flight=0) == Decision(0, None)


def test_lone_request_goes_at_once_when_idle() -> None:
    policy = BatchPolicy(8, 0.002)
    assert policy.decide([Req(1, 10.0)], 10.0, in_flight=0) == Decision(1)


def test_requests_accumulate_while_the_runner_is_busy_then_go_together() -> None:
    policy = BatchPolicy(8, 0.002)
    clock = FakeClock()
    queue: list[Req] = []
    for _ in range(3):
        queue.append(Req(2, clock.now))
        clock.now += 0.01  # far past max_delay: the busy runner is what holds them
        assert policy.decide(queue, clock.now, in_flight=1) == Decision(0, None)
    assert policy.decide(queue, clock.now, in_flight=0) == Decision(3)


def test_batch_stops_at_max_batch_size_and_a_full_batch_goes() -> None:
    policy = BatchPolicy(4, 0.002, max_in_flight=2)
    queue = [Req(2, 0.0), Req(1, 0.0), Req(2, 0.0), Req(1, 0.0)]
    # 2 + 1 fit, the next 2 would overflow: the batch is as full as it gets, so it goes now
    # even though another batch is running.
    assert policy.decide(queue, 0.0, in_flight=1) == Decision(2)
    assert policy.decide(queue[2:], 0.0, in_flight=1) == Decision(0, pytest.approx(0.002))  # type: ignore[arg-type]
    assert policy.decide([Req(4, 0.0)], 0.0, in_flight=1) == Decision(1)


def test_oversized_request_goes_alone() -> None:
    policy = BatchPolicy(4, 0.002)
    assert policy.decide([Req(10, 0.0), Req(1, 0.0)], 0.0, in_flight=0) == Decision(1)


def test_free_runner_waits_up_to_max_delay_while_another_is_busy() -> None:
    policy = BatchPolicy(8, 0.002, max_in_flight=2)
    clock = FakeClock()
    queue = [Req(1, clock.now)]
    assert policy.decide(queue, clock.now, in_flight=1) == Decision(0, pytest.approx(0.002))  # type: ignore[arg-type]
    clock.now += 0.0015
    queue.append(Req(3, clock.now))
    assert policy.decide(queue, clock.now, in_flight=1) == Decision(0, pytest.approx(0.0005))  # type: ignore[arg-type]
    clock.now += 0.0005
    assert policy.decide(queue, clock.now, in_flight=1) == Decision(2)
    # all runners busy: nothing goes, however late
    assert policy.decide(queue, clock.now + 1, in_flight=2) == Decision(0, None)


def test_policy_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(0, 0.002)
    with pytest.raises(ValueError):
        BatchPolicy(4, -1.0)


class GatedModel:
    """Doubles its input; the first call blocks until released, to let a queue build up."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(int(batch.shape[0]))
        self.entered.set()
        self.release.wait(5)
        return batch * 2


def test_driver_batches_queued_requests_and_splits_outputs() -> None:
    async def scenario() -> None:
        model = GatedModel()
        seen: list[int] = []
        batcher = Batcher(model, BatchPolicy(8, 0.002), max_queued_rows=64, on_batch=seen.append)
        first = asyncio.ensure_future(batcher.submit(np.array([[1.0]])))
        await asyncio.to_thread(model.entered.wait, 5)
        rest = [asyncio.ensure_future(batcher.submit(np.full((n, 1), float(n)))) for n in (1, 2, 3)]
        await asyncio.sleep(0.01)
        assert batcher.queued_rows == 6
        model.release.set()
        results = await asyncio.gather(first, *rest)
        assert model.batches == [1, 6] and seen == [1, 6]
        assert [r.ravel().tolist() for r in results] == [[2.0], [2.0], [4.0, 4.0], [6.0] * 3]
        assert batcher.queued_rows == 0
        await batcher.close()

    asyncio.run(scenario())


def test_an_oversized_request_runs_in_slices_of_a_batch() -> None:
    """The runtime never sees more than max_batch_size rows: its working memory is bounded."""

    async def scenario() -> None:
        model = GatedModel()
        model.release.set()
        batcher = Batcher(model, BatchPolicy(4, 0.002), max_queued_rows=64)
        result = await batcher.submit(np.arange(10.0).reshape(10, 1))
        assert model.batches == [4, 4, 2]
        assert result.ravel().tolist() == [2.0 * i for i in range(10)]
        await batcher.close()

    asyncio.run(scenario())


def test_driver_refuses_when_the_queue_is_full() -> None:
    async def scenario() -> None:
        model = GatedModel()
        batcher = Batcher(model, BatchPolicy(4, 0.002), max_queued_rows=3)
        running = asyncio.ensure_future(batcher.submit(np.zeros((1, 1))))
        await asyncio.to_thread(model.entered.wait, 5)
        queued = asyncio.ensure_future(batcher.submit(np.zeros((2, 1))))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as caught:
            await batcher.submit(np.zeros((2, 1)))
        assert caught.value.status == 503 and caught.value.retry_after >= 1
        model.release.set()
        await asyncio.gather(running, queued)
        await batcher.close()

    asyncio.run(scenario())


def test_model_errors_reach_every_caller_and_close_fails_the_queue() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    async def scenario() -> None:
        batcher = Batcher(broken, BatchPolicy(4, 0.002), max_queued_rows=8)
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(np.zeros((1, 1)))

        model = GatedModel()
        gated = Batcher(model, BatchPolicy(4, 0.002), max_queued_rows=8)
        running = asyncio.ensure_future(gated.submit(np.zeros((1, 1))))
        await asyncio.to_thread(model.entered.wait, 5)
        waiting = asyncio.ensure_future(gated.submit(np.zeros((1, 1))))
        await asyncio.sleep(0)
        await gated.close()
        model.release.set()
        with pytest.raises(Unavailable):
            await waiting
        await asyncio.gather(running, return_exceptions=True)
        assert gated.closed
        with pytest.raises(Unavailable):
            await gated.submit(np.zeros((1, 1)))
        await batcher.close()

    asyncio.run(scenario())


def test_a_fast_model_runs_on_the_event_loop_and_a_slow_one_on_the_worker() -> None:
    """Handing a batch to a thread costs more than a fast model's batch: those run inline,
    once measured; a model whose batches take longer than INLINE_SECONDS never blocks the loop."""

    async def scenario(seconds: float) -> list[bool]:
        loop_thread = threading.get_ident()
        on_loop: list[bool] = []

        def model(batch: np.ndarray) -> np.ndarray:
            on_loop.append(threading.get_ident() == loop_thread)
            if seconds:
                time.sleep(seconds)
            return batch * 2

        batcher = Batcher(model, BatchPolicy(4, 0.002), max_queued_rows=64)
        for i in range(20):
            result = await batcher.submit(np.full((1, 1), float(i)))
            assert result.ravel().tolist() == [2.0 * i]
        await batcher.close()
        return on_loop

    fast = asyncio.run(scenario(0.0))
    assert not fast[0]  # the first batch's cost is unknown: the worker runs it
    assert any(fast[1:])
    assert not any(asyncio.run(scenario(INLINE_SECONDS * 2)))


def test_probes_grow_rarer_as_hand_offs_cost_more_batches() -> None:
    """A probe batch waits a hand-off: when that is many batches' time, probes are as rare,
    so that probing costs about 1/PROBE_EVERY of a batch on average, and never too rarely."""
    assert probe_every(0.001, 0.0001) == PROBE_EVERY  # a cheap hand-off: the base rate
    assert probe_every(0.001, 0.001) == PROBE_EVERY
    assert probe_every(0.0003, 0.003) == PROBE_EVERY * 10
    assert probe_every(0.0001, 1.0) == MAX_PROBE_EVERY
    assert probe_every(0.0, 0.001) == MAX_PROBE_EVERY
    for cost, handoff in ((0.0003, 0.0006), (0.0003, 0.003), (0.0002, 0.005)):
        every = probe_every(cost, handoff)
        assert handoff / every <= cost / PROBE_EVERY * 1.1
