""":class:`ReportSender`: a job's metrics and progress posted from a background thread.

A post is a round trip to the control plane (a few ms on a quiet machine, seconds on a
slow one); made from the training loop, it stops training for that long. The training
thread only hands its reports over:

- **metrics** are kept, every one, in the order logged, in a queue of at most
  ``max_pending`` reports; when the control plane falls that far behind, ``metrics`` waits
  for room (back pressure, never a loss);
- **progress** is coalesced: one slot holds the latest unsent value, and a newer one
  replaces it (only the latest position matters).

The sender thread posts the queued metrics first, then the latest progress. A post that
raises (an attempt fenced, a control plane out of reach past its retry window, a 4xx) stops
the sending, and the error is raised in the training thread at its next ``metrics``,
``progress`` or ``flush`` call, as if it had made the post itself. :meth:`flush` waits until
everything handed over has been posted: the job calls it before it ends, so what a user
logged arrives before the job's final status. The thread starts on the first report and
ends after ``idle_seconds`` without one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_PENDING = 10_000  # metric reports: far more than a job logs between two posts
IDLE_SECONDS = 2.0


class ReportSender:
    def __init__(
        self,
        post_metrics: Callable[[int, dict[str, float]], None],
        post_progress: Callable[[dict[str, Any]], None],
        *,
        max_pending: int = MAX_PENDING,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._post_metrics, self._post_progress = post_metrics, post_progress
        self.max_pending, self.idle_seconds = max_pending, idle_seconds
        self._cond = threading.Condition()
        self._metrics: deque[tuple[int, dict[str, float]]] = deque()
        self._progress: dict[str, Any] | None = None
        self._busy = False  # a post is in flight
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Queue one metric report (waits while ``max_pending`` are unsent)."""
        with self._cond:
            while len(self._metrics) >= self.max_pending and self._error is None:
                self._cond.wait()
            self._raise_error()
            self._metrics.append((step, dict(values)))
            self._wake()

    def progress(self, body: dict[str, Any]) -> None:
        """Make ``body`` the progress to post next, replacing one not yet posted."""
        with self._cond:
            self._raise_error()
            self._progress = body
            self._wake()

    def pending(self) -> int:
        """Reports handed over and not yet posted (the one in flight included)."""
        with self._cond:
            return len(self._metrics) + (self._progress is not None) + self._busy

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every report handed over is posted; raise what a post raised. False
        when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._error is None and (self._metrics or self._progress or self._busy):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            self._raise_error()
        return True

    # -- the sender thread ---------------------------------------------------------------

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _wake(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nimbus-reports", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _next(self) -> tuple[int, dict[str, float]] | dict[str, Any] | None:
        """The next report to post, or None when the thread should end (idle)."""
        with self._cond:
            while not (self._metrics or self._progress is not None):
                if not self._cond.wait(self.idle_seconds) and not (
                    self._metrics or self._progress is not None
                ):
                    self._thread = None
                    return None
            self._busy = True
            if self._metrics:
                return self._metrics.popleft()
            body, self._progress = self._progress, None
            return body

    def _run(self) -> None:
        while (report := self._next()) is not None:
            try:
                if isinstance(report, tuple):
                    self._post_metrics(*report)
                else:
                    self._post_progress(report)
            except BaseException as exc:  # JobStop included: raised in the training thread
                with self._cond:
                    self._error = exc
                    self._metrics.clear()
                    self._progress = None
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
