"""Periodic work in a daemon thread: the control plane's sweeps and loops, a replica's orphan
watch, a job's heartbeat each run one :class:`Ticker`.

A bottom module (standard library only), so every layer may use it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    """Calls ``work`` every ``interval`` seconds in a daemon thread named ``name`` (a
    ``Background`` of the app: ``start`` and ``stop``).

    The first round runs ``interval`` seconds after :meth:`start`, or at once with
    ``first_now``. A round that raises is logged under ``name`` and the next one runs on time.
    :meth:`wake` runs the next round now rather than at the end of the wait (one round for
    any number of wakes while one runs). :meth:`stop` ends the wait at once; a round in
    progress is waited for up to ``join_timeout`` seconds. A round may call :meth:`stop`
    itself (its work is done): the loop ends after it.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], object],
        *,
        first_now: bool = False,
        join_timeout: float = 10.0,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"{name}: the interval must be above 0 seconds, not {interval}")
        self.name, self.interval, self.work = name, interval, work
        self.first_now, self.join_timeout = first_now, join_timeout
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let no round start any more and wait up to ``join_timeout`` seconds for the one
        in progress (not when called from a round). Safe before :meth:`start`, and twice."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.join_timeout)
            if thread.is_alive():
                log.warning("%s: a round still runs %g s after stop", self.name, self.join_timeout)

    def wake(self) -> None:
        """Run the next round now (safe from any thread; nothing once stopped)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Has :meth:`stop` been called?"""
        return self._stop.is_set()

    def is_alive(self) -> bool:
        """Does the thread run (a round, or the wait for the next)?"""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        if self.first_now and not self._stop.is_set():
            self._round()
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._stop.is_set():
                self._round()

    def _round(self) -> None:
        try:
            self.work()
        except Exception:
            log.exception("%s: a round failed (the next in %g s)", self.name, self.interval)
