"""Which control plane schedules: the election loop of one server (a ``Background``).

Every ``interval`` (a fifth of the leader lease) :class:`Election` heartbeats this control
plane and runs one election round (:meth:`ClusterService.round`). Winning starts a *term*:
a :class:`~nimbus.jobs.scheduler.Scheduler` made for the fence just won (its queue refuses
every write once another control plane leads), run in a thread of its own. Losing the
lease (deposed: another took it, or this one could not renew it in time) ends the term: the
loop stops and the term's attempts are killed (their ends are refused by the fence; the new
leader requeues them when their leases run out). A graceful stop ends the term leaving its
attempts alone, as before several control planes (the next start of this instance recovers
them), and resigns the lease so another control plane takes over at once.

Dead control planes of this machine (:meth:`ClusterService.dead_here`) are taken over each
round: their deployments by any live one (:meth:`DeploymentService.take_over`), their
attempts by the leader, which kills what is left of their processes and requeues their jobs
at once rather than after their leases.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nimbus.db.control_planes import ControlPlane
from nimbus.jobs.domain import AttemptState, Fence
from nimbus.jobs.scheduler import Scheduler
from nimbus.services.cluster import ClusterService

log = logging.getLogger(__name__)

# Kill the processes of attempts under a dead control plane's jobs directory that
# ``should_kill`` approves (by attempt id); returns the attempt ids killed.
Reaper = Callable[[Path, Callable[[str], bool]], list[str]]


@dataclass
class _Term:
    fence: Fence
    scheduler: Scheduler
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Election:
    """This control plane's part in the election and, while it leads, its scheduler."""

    def __init__(
        self,
        cluster: ClusterService,
        *,
        make_scheduler: Callable[[Fence], Scheduler] | None,
        on_ready: Callable[[], object] | None = None,
        reap: Reaper | None = None,
        take_over_deployments: Callable[[str], list[str]] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.cluster = cluster
        self.make_scheduler = make_scheduler  # None: this server runs no job (API only)
        self.on_ready = on_ready
        self.reap = reap
        self.take_over_deployments = take_over_deployments
        self.stopping = stopping or threading.Event()
        self.interval = cluster.lease_seconds / 5
        self._term: _Term | None = None
        self._renewed = float("-inf")  # monotonic time of the last renewal
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fence(self) -> Fence | None:
        term = self._term
        return term.fence if term is not None else None

    def wake_scheduler(self) -> None:
        """A job was submitted: the leading scheduler (if this one leads) ticks now."""
        term = self._term
        if term is not None:
            term.scheduler.wake()

    def start(self) -> None:
        self.cluster.register()
        self.run_round()  # the first round now: a lone server leads as it starts
        self._thread = threading.Thread(target=self._run, name="election", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self.stopping.is_set():
                self.run_round()
        term = self._term
        if term is not None:  # the server is stopping: claim nothing more meanwhile
            term.stop.set()
            term.scheduler.wake()

    def run_round(self) -> None:
        """One round: heartbeat, elect, begin or end a term, take over the dead (the loop
        calls it every ``interval``)."""
        held = self.fence
        try:
            fence = self.cluster.round(held, candidate=self.make_scheduler is not None)
        except Exception:
            log.exception("election round failed")
            if held is not None and time.monotonic() - self._renewed > self.cluster.lease_seconds:
                log.error("could not renew the leader lease in time: no longer scheduling")
                self._end_term(kill=True)
            return
        if fence is not None:
            self._renewed = time.monotonic()
        if held is not None and fence != held:
            log.warning("deposed: another control plane leads now (was epoch %d)", held.epoch)
            self._end_term(kill=True)
        if fence is not None and held is None:
            self._begin_term(fence)
        self._take_over_dead()

    def _begin_term(self, fence: Fence) -> None:
        assert self.make_scheduler is not None
        log.info("leading the scheduler (epoch %d)", fence.epoch)
        term = _Term(fence, self.make_scheduler(fence))
        term.thread = threading.Thread(
            target=term.scheduler.run,
            args=(term.stop, self.on_ready),
            name=f"scheduler-{fence.epoch}",
            daemon=True,
        )
        self._term = term
        term.thread.start()

    def _end_term(self, *, kill: bool) -> None:
        term, self._term = self._term, None
        if term is None:
            return
        term.stop.set()
        term.scheduler.wake()
        if term.thread is not None:
            term.thread.join(30)
        if kill:
            term.scheduler.shutdown()  # its ends are fenced: the new leader requeues them

    def _take_over_dead(self) -> None:
        try:
            dead = self.cluster.dead_here()
        except Exception:
            log.exception("could not list the control planes")
            return
        for plane in dead:
            try:
                self._take_over(plane)
            except Exception:
                log.exception("could not take over control plane %s", plane.id)

    def _take_over(self, plane: ControlPlane) -> None:
        if self.take_over_deployments is not None:
            self.take_over_deployments(plane.id)
        term = self._term
        if term is None:
            return  # its attempts are the leader's to requeue
        queue = term.scheduler.queue

        def left_by_it(attempt_id: str) -> bool:
            attempt = queue.get_attempt(attempt_id)
            return (
                attempt is None
                or attempt.state is not AttemptState.RUNNING
                or attempt.lease_owner == plane.id
            )

        killed = self.reap(Path(plane.jobs_dir), left_by_it) if self.reap is not None else []
        now, policy = term.scheduler.now(), term.scheduler.config.retry
        requeued = queue.abandon_owned(plane.id, now, [], policy)
        log.info(
            "took over dead control plane %s: killed %d attempt(s), requeued %d job(s)",
            plane.id,
            len(killed),
            len(requeued),
        )
        self.cluster.forget(plane.id)

    def stop(self) -> None:
        """Stop electing; end the term leaving its attempts alone; resign the lease."""
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        held = self.fence
        self._end_term(kill=False)
        try:
            if held is not None:
                self.cluster.resign(held)
            self.cluster.unregister()
        except Exception:
            log.exception("could not resign the leader lease")
