"""Pure scheduling decisions, with explicit times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from nimbus.errors import InvalidInput
from nimbus.jobs.capacity import (
    Capacity,
    Usage,
    check_request,
    detect_capacity,
    total_memory_bytes,
)
from nimbus.jobs.domain import (
    AttemptState,
    ExitReason,
    JobSpec,
    JobState,
    Resources,
    parse_duration,
    parse_memory,
)
from nimbus.jobs.gpus import machine_gpus
from nimbus.jobs.policy import (
    Outcome,
    QueuedJob,
    RetryPolicy,
    RunningJob,
    backoff,
    lease_expired,
    on_attempt_end,
    pick,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NODE = Capacity(cpus=4, gpus=1, memory_bytes=16 << 30)
POLICY = RetryPolicy(base_seconds=10, factor=2, cap_seconds=60)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def q(
    job_id: str,
    t: float = 0,
    prio: int = 0,
    tenant: int = 1,
    cpus: float = 1,
    gpus: int = 0,
    workers: int = 1,
    not_before: float | None = None,
) -> QueuedJob:
    res = Resources(cpus=cpus, gpus=gpus, memory_bytes=1 << 30, workers=workers)
    nb = at(not_before) if not_before is not None else None
    return QueuedJob(job_id, tenant, prio, at(t), res, nb)


def r(job_id: str, tenant: int = 1, cpus: float = 1, local: bool = True) -> RunningJob:
    return RunningJob(job_id, tenant, Resources(cpus=cpus, memory_bytes=1 << 30), local)


def test_priority_then_fifo() -> None:
    queued = [q("old", t=0), q("new", t=5), q("urgent", t=9, prio=10)]
    assert pick(queued, [], NODE, None, at(10)) == ["urgent", "old", "new"]


def test_not_before_and_tenant_limit() -> None:
    queued = [q("later", not_before=20), q("a2", t=1), q("a3", t=2), q("b1", t=3, tenant=2)]
    running = [r("a1"), r("remote", tenant=1, local=False)]
    assert pick(queued, running, NODE, 3, at(10)) == ["a2", "b1"]
    assert pick(queued, running, NODE, 3, at(20)) == ["later", "b1"]


def test_resources_workers_multiply_and_remote_jobs_do_not_use_this_node() -> None:
    queued = [q("two-workers", cpus=1.5, workers=2), q("gpu", t=1, gpus=1), q("gpu2", t=2, gpus=1)]
    running = [r("big-remote", cpus=4, local=False)]
    assert pick(queued, running, NODE, None, at(0)) == ["two-workers", "gpu"]
    assert pick(queued, [r("busy", cpus=2)], NODE, None, at(0)) == ["gpu"]  # 3 cpus won't fit


def test_backfill_small_jobs_past_a_big_one_unless_it_waited_too_long() -> None:
    queued = [q("big", t=0, cpus=4), q("small", t=1, cpus=1)]
    running = [r("x", cpus=2)]
    assert pick(queued, running, NODE, None, at(30)) == ["small"]
    wait = timedelta(seconds=60)
    assert pick(queued, running, NODE, None, at(30), reserve_after=wait) == ["small"]
    assert pick(queued, running, NODE, None, at(60), reserve_after=wait) == []  # drain for big
    # A job this node can never hold is neither started nor reserved for.
    assert pick([q("huge", cpus=64), q("s", t=1)], [], NODE, None, at(999), reserve_after=wait) == [
        "s"
    ]


def test_fractional_cpus_add_up() -> None:
    queued = [q(f"j{i}", t=i, cpus=0.1) for i in range(45)]
    roomy = Capacity(cpus=4, gpus=0, memory_bytes=1 << 40)
    assert len(pick(queued, [], roomy, None, at(0))) == 40


@dataclass
class Facts:
    attempts: int = 1
    max_retries: int = 2
    deadline_at: datetime | None = None
    cancel_requested: bool = False


def test_backoff_grows_and_caps() -> None:
    assert [backoff(n, POLICY).total_seconds() for n in (1, 2, 3, 4, 9)] == [10, 20, 40, 60, 60]


@pytest.mark.parametrize(
    ("outcome", "state", "reason"),
    [
        (Outcome.from_exit(0), JobState.SUCCEEDED, ExitReason.SUCCEEDED),
        (Outcome.from_exit(3), JobState.FAILED, ExitReason.USER_ERROR),
        (Outcome.from_exit(1), JobState.QUEUED, ExitReason.EXIT_ERROR),
        (Outcome.from_exit(None, 9), JobState.QUEUED, ExitReason.SIGNALED),
        (Outcome.lost(), JobState.QUEUED, ExitReason.LOST),
        (Outcome.infra("spawn failed"), JobState.QUEUED, ExitReason.INFRA),
    ],
)
def test_on_attempt_end_outcomes(outcome: Outcome, state: JobState, reason: ExitReason) -> None:
    decision = on_attempt_end(Facts(attempts=2), outcome, at(100), POLICY)
    assert (decision.job_state, decision.reason) == (state, reason)
    if state is JobState.QUEUED:
        assert decision.not_before == at(120)
        expected = AttemptState.LOST if reason is ExitReason.LOST else AttemptState.FAILED
        assert decision.attempt_state is expected


def test_retries_exhausted_cancel_and_deadline() -> None:
    killed = Outcome.from_exit(None, 9)
    spent = on_attempt_end(Facts(attempts=3), killed, at(0), POLICY)
    assert spent.job_state is JobState.FAILED and "SIGKILL" in spent.message
    assert "3 attempts" in spent.message
    cancelled = on_attempt_end(Facts(cancel_requested=True), Outcome.from_exit(None, 15), at(0))
    assert cancelled.job_state is JobState.CANCELLED
    late = on_attempt_end(Facts(deadline_at=at(50)), killed, at(50), POLICY)
    assert late.reason is ExitReason.DEADLINE and "deadline exceeded" in late.message
    no_time = on_attempt_end(Facts(deadline_at=at(55)), killed, at(50), POLICY)
    assert no_time.reason is ExitReason.DEADLINE
    success = on_attempt_end(
        Facts(cancel_requested=True, deadline_at=at(0)), Outcome.from_exit(0), at(9)
    )
    assert success.job_state is JobState.SUCCEEDED  # finished work wins over a late cancel


def test_lease_expired() -> None:
    assert not lease_expired(at(10), at(9)) and lease_expired(at(10), at(10))
    assert not lease_expired(None, at(10))


def test_parse_memory_and_duration() -> None:
    assert parse_memory("4G") == 4 << 30 and parse_memory("512Mi") == 512 << 20
    assert parse_memory("1.5gb") == 3 << 29 and parse_memory("100") == 100
    assert parse_memory(2048) == 2048
    assert parse_duration("2h") == 7200 and parse_duration("30m") == 1800
    assert parse_duration("90s") == 90 and parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45 and parse_duration(2.5) == 2.5
    for bad in ("4X", "", "-1G"):
        with pytest.raises(InvalidInput):
            parse_memory(bad)
    for bad_d in ("2 hours", "h", "0s", "-5"):
        with pytest.raises(InvalidInput):
            parse_duration(bad_d)


def test_spec_validation_and_round_trip() -> None:
    spec = JobSpec(
        model="cnn",
        dataset="mnist:2",
        params={"lr": 0.1},
        resources=Resources(cpus=0.5, workers=2),
        priority=3,
        seed=7,
    )
    assert JobSpec.from_dict(spec.to_dict()) == spec
    for bad in (
        {"model": "cnn", "bogus": 1},
        {"model": "cnn", "resources": {"cpus": 0}},
        {"model": "cnn", "resources": {"workers": 0}},
        {"model": "", "priority": 1},
        {"model": "cnn", "max_retries": -1},
        {"model": "cnn", "resources": {"gpu": 1}},
    ):
        with pytest.raises(InvalidInput):
            JobSpec.from_dict(bad)


def test_check_request_names_the_resource() -> None:
    check_request(Resources(cpus=2, workers=2, memory_bytes=1 << 30), NODE)
    cases = {
        "cpus": Resources(cpus=3, workers=2),
        "gpus": Resources(gpus=2),
        "memory": Resources(memory_bytes=32 << 30),
    }
    for name, need in cases.items():
        with pytest.raises(InvalidInput, match=name) as info:
            check_request(need, NODE)
        assert info.value.details["resource"] == name


def test_detect_capacity_overrides(tmp_path: object) -> None:
    cap = detect_capacity(cpus=3, gpus=2, memory_bytes=1000)
    assert cap == Capacity(cpus=3.0, gpus=2, memory_bytes=1000)
    detected = detect_capacity()
    assert detected.cpus >= 1 and detected.memory_bytes == total_memory_bytes() > 0
    assert detected.gpus == len(machine_gpus())  # the driver's list, not torch's (not imported)


def test_custom_resources_fit_per_node_and_are_refused_by_name() -> None:
    h100 = Capacity(cpus=8, gpus=2, memory_bytes=16 << 30, custom={"accelerator:H100": 2})
    need = Resources(cpus=1, gpus=1, memory_bytes=1 << 30, custom={"accelerator:H100": 1})
    two = Resources(cpus=1, gpus=1, memory_bytes=1 << 30, workers=2, custom=need.custom)
    assert need.total_custom == {"accelerator:H100": 1} and two.total_custom == {
        "accelerator:H100": 2
    }
    assert h100.fits(two) and not h100.fits(two, Usage().plus(need))
    assert not NODE.fits(need)  # a node without the resource has none of it
    queued = [q("plain", t=0), QueuedJob("h", 1, 0, at(1), need), QueuedJob("h2", 1, 0, at(2), two)]
    assert pick(queued, [], h100, None, at(5)) == ["plain", "h"]
    assert pick(queued, [], NODE, None, at(5)) == ["plain"]
    with pytest.raises(InvalidInput, match="1 of resource accelerator:H100 but a node has 0") as e:
        check_request(need, NODE)
    assert e.value.details == {"resource": "accelerator:H100"}
    check_request(two, h100)


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        ({"": 1}, "invalid resource name"),
        ({"a b": 1}, "invalid resource name"),
        ({"tpu": 0}, "must be positive"),
        ({"tpu": float("nan")}, "must be positive"),
        ({"tpu": "1"}, "needs a number"),
        ({"tpu": True}, "needs a number"),
        (["tpu"], "NAME: AMOUNT"),
    ],
)
def test_custom_resources_are_checked(custom: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Resources(custom=custom)  # type: ignore[arg-type]


def test_per_tenant_limits() -> None:
    queued = [q("a1", t=1), q("a2", t=2), q("b1", t=3, tenant=2), q("c1", t=4, tenant=3)]
    assert pick(queued, [r("a0")], NODE, {1: 2, 2: 0}, at(9)) == ["a1", "c1"]
