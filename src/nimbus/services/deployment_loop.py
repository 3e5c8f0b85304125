"""The control plane's supervision of deployments: one supervisor per tenant (:class:`Fleet`)
and the thread that ticks them and keeps the metadata store and token files in step
(:class:`DeploymentLoop`, a ``Background`` of the app)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from nimbus.serving.fleet.orphan import Lifeline
from nimbus.serving.fleet.supervisor import Supervisor
from nimbus.ticker import Ticker

log = logging.getLogger(__name__)


class Fleet:
    """One supervisor per tenant, made on first use, all ticked by :class:`DeploymentLoop`.

    Each tenant has its own supervisor because deployment names are unique per tenant only
    (and the name is the model name clients use on the endpoint).
    """

    def __init__(self, root: Path, make: Callable[[Path], Supervisor]) -> None:
        self.root = root
        self._make = make
        self._supervisors: dict[str, Supervisor] = {}
        self._lock = threading.Lock()

    def of(self, tenant: str) -> Supervisor:
        """The supervisor of ``tenant``'s deployments (made now if it is the first)."""
        with self._lock:
            if tenant not in self._supervisors:
                self._supervisors[tenant] = self._make(self.root / tenant)
            return self._supervisors[tenant]

    def running(self, tenant: str, name: str) -> Supervisor | None:
        """The supervisor running deployment ``name`` of ``tenant``, if this one is."""
        with self._lock:
            sup = self._supervisors.get(tenant)
        return sup if sup is not None and name in sup.names() else None

    def items(self) -> list[tuple[str, Supervisor]]:
        """``(tenant, supervisor)`` pairs, by tenant."""
        with self._lock:
            return sorted(self._supervisors.items(), key=lambda item: item[0])

    def tick(self) -> None:
        """One round of every supervisor: health checks, restarts, rollouts."""
        for _, sup in self.items():
            sup.tick()

    def detach(self) -> None:
        """Leave every replica serving (a control-plane shutdown)."""
        for _, sup in self.items():
            sup.detach()


def default_supervisor(log_dir: Path, lifeline: Lifeline | None = None) -> Supervisor:
    """A supervisor writing its replicas' logs under ``log_dir``, its replicas tied to
    ``lifeline`` (see :mod:`nimbus.serving.fleet.orphan`)."""
    return Supervisor(log_dir=log_dir, lifeline=lifeline)


class Supervised(Protocol):
    """What the loop drives: the deployment service
    (:class:`~nimbus.services.deployments.DeploymentService`)."""

    owner: str
    fleet: Fleet

    def recover(self) -> None: ...

    def refresh_tokens(self, *, force: bool = False, only: str | None = None) -> None: ...

    def sync(self) -> None: ...

    def stop_replicas(self) -> None: ...


class DeploymentLoop:
    """The control plane's supervision of deployments (a ``Background`` of the app).

    ``start`` recovers the deployments ``owner`` owns, then a thread ticks every tenant's
    supervisor every ``interval`` seconds and, every ``sync_every`` seconds, refreshes the
    token files and persists statuses. ``stop`` persists once more and then, with ``keep``,
    detaches (the replicas keep serving through a control-plane restart, to be adopted by the
    next start) or, without, drains and stops every replica (the next start starts them).
    """

    def __init__(
        self,
        service: Supervised,
        owner: str,
        interval: float = 0.5,
        sync_every: float = 1.0,
        *,
        keep: bool = True,
    ) -> None:
        self.service = service
        self.keep = keep
        self.owner = owner
        self.sync_every = sync_every
        self._synced = float("-inf")  # monotonic time of the last sync
        self._ticker = Ticker("deployments", interval, self.round)

    def start(self) -> None:
        """Recover this instance's deployments, then start the thread."""
        self.service.owner = self.owner
        self.service.recover()
        self._ticker.start()

    def round(self) -> None:
        """One round: tick every supervisor; refresh the token files and persist statuses
        when ``sync_every`` has passed since the last time."""
        self.service.fleet.tick()
        if time.monotonic() - self._synced >= self.sync_every:
            self.service.refresh_tokens()
            self.service.sync()
            self._synced = time.monotonic()

    def stop(self) -> None:
        """Stop the thread, persist the statuses once more, then leave the replicas serving
        (``keep``) or stop them."""
        self._ticker.stop()
        try:
            self.service.sync()
        except Exception:
            log.exception("could not persist deployment statuses at shutdown")
        if not self.keep:
            try:
                self.service.stop_replicas()
            except Exception:
                log.exception("could not stop every replica at shutdown")
        self.service.fleet.detach()
