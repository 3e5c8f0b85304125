"""Pure decisions of the supervisor: given a deployment's replicas, what to do next.

Nothing here touches a process, a socket or the clock: the supervisor observes its replicas,
hands :func:`decide` a snapshot and the time, and carries out the :class:`Action` list.

The rules, in order:

1. Safety: kill a replica stuck starting, failing health checks, or draining too long.
2. Crashed replicas are restarted once their backoff has passed, or forgotten when they ran
   an old spec or the deployment has more than it needs.
3. Missing replicas are started, all at once (a new deployment, a scale-up).
4. Surplus replicas are drained (a scale-down, a stop).
5. A rolling update replaces one replica at a time: start one with the new spec, wait until it
   is ready, drain one old replica, wait until it has exited, repeat. The old replicas keep
   serving until their replacements answer, so a new version that never gets ready stalls
   the roll instead of taking the deployment down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from nimbus.serving.fleet.deployment import DeploymentState, ReplicaState


@dataclass(frozen=True)
class Policy:
    """Timings and limits of supervision (seconds)."""

    start_timeout: float = 60.0  # spawned but not ready by then: killed, counted as a failure
    drain_timeout: float = 30.0  # SIGTERM'd but alive by then: SIGKILL
    unhealthy_after: int = 3  # consecutive failed checks of a ready replica before a kill
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    stable_after: float = 10.0  # ready this long: its earlier failures are forgiven
    failed_after: int = 3  # no replica ready and one failed this often in a row: FAILED
    max_surge: int = 1  # extra replicas during a rolling update


class Kind(StrEnum):
    START = "start"  # spawn a new replica with the current spec
    RESTART = "restart"  # respawn this exited replica with the current spec
    REMOVE = "remove"  # forget this exited replica
    TERMINATE = "terminate"  # SIGTERM: drain and exit
    KILL = "kill"  # SIGKILL


@dataclass(frozen=True)
class Action:
    kind: Kind
    replica: int | None = None  # the replica's id; None for START


@dataclass(frozen=True)
class ReplicaView:
    """What the decisions know of one replica."""

    id: int
    current: bool  # runs the deployment's current spec
    state: ReplicaState
    since: float  # when it entered ``state``
    retry_at: float = 0.0  # EXITED: earliest restart
    health_failures: int = 0  # consecutive failed checks
    failures: int = 0  # consecutive unasked exits


def backoff(failures: int, base: float, cap: float) -> float:
    """Delay before restarting after ``failures`` consecutive failures: none after the first
    (a lone crash comes straight back), then ``base``, doubling, at most ``cap``."""
    if failures <= 1:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 2)))


def decide(
    replicas: Sequence[ReplicaView], desired: int, now: float, policy: Policy
) -> list[Action]:
    """The actions that move a deployment towards ``desired`` replicas of its current spec."""
    actions = [a for r in replicas if (a := _safety(r, now, policy)) is not None]
    live = [r for r in replicas if r.state is not ReplicaState.DRAINING]

    # Crashed replicas: old ones and the surplus are forgotten, the rest restarted.
    for r in [r for r in live if r.state is ReplicaState.EXITED and not r.current]:
        actions.append(Action(Kind.REMOVE, r.id))
        live.remove(r)
    running_old = [r for r in live if not r.current and r.state is not ReplicaState.EXITED]
    allowance = policy.max_surge if running_old and desired > 0 else 0
    surplus = len(live) - desired - allowance
    for r in sorted((r for r in live if r.state is ReplicaState.EXITED), key=lambda r: -r.id):
        if surplus > 0:
            actions.append(Action(Kind.REMOVE, r.id))
            live.remove(r)
            surplus -= 1
        elif now >= r.retry_at:
            actions.append(Action(Kind.RESTART, r.id))

    missing = desired - len(live)
    if missing > 0:
        return actions + [Action(Kind.START)] * missing
    running = [r for r in live if r.state is not ReplicaState.EXITED]
    if surplus > 0:
        victims = sorted(running, key=_victim_order)[:surplus]
        return actions + [Action(Kind.TERMINATE, r.id) for r in victims]
    if not running_old:
        return actions
    draining = any(r.state is ReplicaState.DRAINING for r in replicas)
    new_not_ready = any(r.current and r.state is not ReplicaState.READY for r in live)
    if draining or new_not_ready:
        return actions  # one step at a time
    if len(live) < desired + policy.max_surge:
        return [*actions, Action(Kind.START)]
    victim = min(running_old, key=_victim_order)
    return [*actions, Action(Kind.TERMINATE, victim.id)]


def _safety(r: ReplicaView, now: float, policy: Policy) -> Action | None:
    if r.state is ReplicaState.STARTING and now - r.since > policy.start_timeout:
        return Action(Kind.KILL, r.id)
    if r.state is ReplicaState.UNHEALTHY and r.health_failures >= policy.unhealthy_after:
        return Action(Kind.KILL, r.id)
    if r.state is ReplicaState.DRAINING and now - r.since > policy.drain_timeout:
        return Action(Kind.KILL, r.id)
    return None


_STATE_ORDER = {
    ReplicaState.STARTING: 0,
    ReplicaState.UNHEALTHY: 1,
    ReplicaState.READY: 2,
}


def _victim_order(r: ReplicaView) -> tuple[bool, int, int]:
    """Drain old replicas first, then those not serving, then the oldest."""
    return (r.current, _STATE_ORDER.get(r.state, 0), r.id)


def rollout_done(replicas: Sequence[ReplicaView], desired: int) -> bool:
    """True when exactly ``desired`` replicas run, all ready with the current spec."""
    return len(replicas) == desired and all(
        r.current and r.state is ReplicaState.READY for r in replicas
    )


def deployment_state(
    replicas: Sequence[ReplicaView], desired: int, policy: Policy, stopped: bool = False
) -> DeploymentState:
    """The deployment's state from its replicas'."""
    if stopped:
        return DeploymentState.STOPPED
    ready = sum(r.state is ReplicaState.READY for r in replicas)
    if ready >= desired:
        return DeploymentState.READY
    if ready:
        return DeploymentState.DEGRADED
    if any(r.failures >= policy.failed_after for r in replicas):
        return DeploymentState.FAILED
    return DeploymentState.PENDING
