"""nimbus.ticker: rounds at the interval in a named daemon thread, a failing round logged and
the next one on time, a stop that ends the wait at once (real threads, sub-second intervals)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from nimbus.ticker import Ticker

INTERVAL = 0.05


class Rounds:
    """The work of a ticker: records when each round ran; ``until`` rounds set ``done``."""

    def __init__(self, until: int = 3) -> None:
        self.at: list[float] = []
        self.threads: list[str] = []
        self.until = until
        self.done = threading.Event()

    def __call__(self) -> None:
        self.at.append(time.monotonic())
        self.threads.append(threading.current_thread().name)
        if len(self.at) >= self.until:
            self.done.set()


def test_rounds_run_at_the_interval_in_a_named_daemon_thread() -> None:
    rounds = Rounds(until=3)
    ticker = Ticker("tick-test", INTERVAL, rounds)
    started = time.monotonic()
    ticker.start()
    try:
        assert rounds.done.wait(5)
        assert ticker.is_alive()
    finally:
        ticker.stop()
    assert not ticker.is_alive()
    assert rounds.at[0] - started >= INTERVAL * 0.9  # the first one an interval after start
    gaps = [b - a for a, b in zip(rounds.at, rounds.at[1:], strict=False)]
    assert all(gap >= INTERVAL * 0.9 for gap in gaps), gaps
    assert set(rounds.threads) == {"tick-test"}


def test_first_now_runs_a_round_at_start() -> None:
    rounds = Rounds(until=1)
    ticker = Ticker("tick-test", 30.0, rounds, first_now=True)
    ticker.start()
    try:
        assert rounds.done.wait(5)
    finally:
        ticker.stop()
    assert len(rounds.at) == 1


def test_stop_ends_the_wait_at_once() -> None:
    rounds = Rounds()
    ticker = Ticker("tick-test", 30.0, rounds)
    ticker.start()
    time.sleep(0.05)  # the thread is in its wait
    before = time.monotonic()
    ticker.stop()
    assert time.monotonic() - before < 1.0
    assert not ticker.is_alive() and ticker.stopping
    assert rounds.at == []


def test_wake_runs_a_round_at_once_and_the_waits_go_on() -> None:
    rounds = Rounds(until=1)
    ticker = Ticker("tick-test", 30.0, rounds)
    ticker.start()
    try:
        time.sleep(0.05)  # the thread is in its wait
        woken = time.monotonic()
        ticker.wake()
        assert rounds.done.wait(5) and rounds.at[0] - woken < 1.0
        time.sleep(0.2)
        assert len(rounds.at) == 1  # then the next wait is a whole interval
    finally:
        ticker.stop()
    ticker.wake()  # stopped: nothing
    assert len(rounds.at) == 1


def test_a_failing_round_is_logged_with_its_name_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = Rounds(until=2)

    def flaky() -> None:
        rounds()
        if len(rounds.at) == 1:
            raise OSError("the store is unreachable")

    ticker = Ticker("blob-sweep-test", INTERVAL, flaky)
    with caplog.at_level(logging.ERROR, logger="nimbus.ticker"):
        ticker.start()
        try:
            assert rounds.done.wait(5)
        finally:
            ticker.stop()
    [failed] = [r for r in caplog.records if r.name == "nimbus.ticker"]
    assert "blob-sweep-test" in failed.getMessage()
    assert failed.exc_info is not None and isinstance(failed.exc_info[1], OSError)


def test_stop_before_start_and_twice_is_safe() -> None:
    rounds = Rounds()
    ticker = Ticker("tick-test", INTERVAL, rounds, first_now=True)
    ticker.stop()
    ticker.stop()
    assert not ticker.is_alive()
    ticker.start()  # stopped already: no round runs, the thread ends at once
    ticker.stop()
    assert rounds.at == [] and not ticker.is_alive()
    with pytest.raises(RuntimeError, match="already started"):
        ticker.start()


def test_a_round_may_stop_its_own_ticker(caplog: pytest.LogCaptureFixture) -> None:
    rounds = Rounds(until=1)

    def once() -> None:
        rounds()
        ticker.stop()  # from the ticker's own thread: must not join itself

    ticker = Ticker("tick-test", INTERVAL / 5, once)
    with caplog.at_level(logging.WARNING, logger="nimbus.ticker"):
        ticker.start()
        assert rounds.done.wait(5)
        deadline = time.monotonic() + 5
        while ticker.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    time.sleep(INTERVAL)
    assert len(rounds.at) == 1
    assert caplog.records == []  # the round ended well


def test_stop_waits_for_the_round_in_progress_up_to_the_join_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(10)

    ticker = Ticker("slow-test", 30.0, slow, first_now=True, join_timeout=0.1)
    ticker.start()
    assert entered.wait(5)
    before = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="nimbus.ticker"):
        ticker.stop()
    assert 0.09 <= time.monotonic() - before < 1.0
    assert ticker.is_alive()  # still in its round
    assert "slow-test: a round still runs" in caplog.text
    release.set()
    ticker.stop()  # the round ends, and so does the thread
    assert not ticker.is_alive()


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_an_interval_must_be_above_zero(interval: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        Ticker("tick-test", interval, lambda: None)
