"""A replica's lifeline: what tells it that nothing will ever supervise it again.

Replicas outlive their control plane on purpose (a restart or an upgrade adopts them), so
neither an unreachable control plane nor a missing home is enough on its own to end one: a
restarting server is unreachable for a while, and a home may be briefly unmounted. Both
together, for a whole grace period, are: the home that held the deployment is gone (deleted,
or replaced by another directory), and no control plane answers at the address that started
the replica. Then nothing can adopt it, and the replica drains and exits instead of holding
its port forever.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nimbus.ticker import Ticker

log = logging.getLogger(__name__)

DEFAULT_ORPHAN_SECONDS = 300.0
HEALTH_PATH = "/healthz"
LONGEST_CHECK_INTERVAL = 15.0


@dataclass(frozen=True)
class Lifeline:
    """What a replica belongs to: the control plane's NIMBUS_HOME and URL, and how long both
    may be missing before the replica gives up."""

    home: Path
    control_plane: str
    grace_seconds: float = DEFAULT_ORPHAN_SECONDS

    def args(self) -> list[str]:
        """The replica options that carry it (see :mod:`nimbus.serving.fleet.replica`)."""
        return [
            "--home",
            str(self.home),
            "--control-plane",
            self.control_plane,
            "--orphan-seconds",
            str(self.grace_seconds),
        ]


def control_plane_answers(url: str, timeout: float) -> bool:
    """Does anything answer HTTP at ``url``? Any status counts: a server is there."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return False
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", HEALTH_PATH, headers={"Connection": "close"})
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class OrphanWatch:
    """Checks the lifeline every few seconds; calls ``on_orphaned`` once, when the home has
    been gone and the control plane silent for ``grace_seconds`` in a row."""

    def __init__(
        self,
        lifeline: Lifeline,
        on_orphaned: Callable[[], None],
        *,
        answers: Callable[[str, float], bool] = control_plane_answers,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifeline = lifeline
        self.on_orphaned = on_orphaned
        self._answers = answers
        self._clock = clock
        # Another directory at the same path (device and inode differ) is not its home.
        self._home = _identity(lifeline.home)
        self._since: float | None = None
        self.interval = min(LONGEST_CHECK_INTERVAL, max(0.05, lifeline.grace_seconds / 4))
        self._ticker = Ticker("orphan-watch", self.interval, self._check)

    def home_present(self) -> bool:
        """Is the home this replica started under still there (the same directory)?"""
        return self._home is not None and _identity(self.lifeline.home) == self._home

    def orphaned(self) -> bool:
        """One check: True once both have been missing for the grace period."""
        now = self._clock()
        timeout = min(2.0, max(0.2, self.interval))
        if self.home_present() or self._answers(self.lifeline.control_plane, timeout):
            self._since = None
            return False
        if self._since is None:
            self._since = now
        return now - self._since >= self.lifeline.grace_seconds

    def start(self) -> None:
        """Check in a daemon thread until orphaned (then call ``on_orphaned``) or stopped."""
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def _check(self) -> None:
        if self.orphaned():
            log.warning(
                "home %s is gone and the control plane %s has not answered for %.0f s: exiting",
                self.lifeline.home,
                self.lifeline.control_plane,
                self.lifeline.grace_seconds,
            )
            self._ticker.stop()  # from its own round: the loop ends after this one
            self.on_orphaned()
