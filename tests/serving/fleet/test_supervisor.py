"""The deployment supervisor: pure decisions, the supervisor loop with fake processes, and real
replica processes killed with SIGKILL, rolled under load, adopted after a control-plane crash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.errors import Conflict, InvalidInput
from nimbus.security import hash_token
from nimbus.serving.access import TokenHashes, parse_hashes, read_hashes_file
from nimbus.serving.fleet.deployment import (
    DeploymentSpec,
    DeploymentState,
    ReplicaState,
    option,
    without_placement,
)
from nimbus.serving.fleet.drain import DrainGate
from nimbus.serving.fleet.rollout import (
    Action,
    Kind,
    Policy,
    ReplicaView,
    backoff,
    decide,
    deployment_state,
    rollout_done,
)
from nimbus.serving.fleet.sockets import port_in_use
from nimbus.serving.fleet.supervisor import Supervisor
from nimbus.ticker import Ticker
from tests.serving.helpers import Load, alive, body

POLICY = Policy(start_timeout=10, drain_timeout=5, backoff_base=0.5, stable_after=5)
S, R, U, D, X = (
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.UNHEALTHY,
    ReplicaState.DRAINING,
    ReplicaState.EXITED,
)


def view(id: int, state: ReplicaState, current: bool = True, **kw: Any) -> ReplicaView:
    return ReplicaView(id=id, current=current, state=state, since=kw.pop("since", 0.0), **kw)


# -- pure decisions ------------------------------------------------------------------------------


def test_backoff_lets_a_lone_crash_come_straight_back_then_doubles() -> None:
    assert [backoff(n, 0.5, 4.0) for n in range(1, 7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_new_deployment_starts_every_replica_at_once() -> None:
    assert decide([], 3, 0.0, POLICY) == [Action(Kind.START)] * 3
    assert decide([view(0, S), view(1, R)], 2, 1.0, POLICY) == []


def test_crashed_replica_restarts_after_its_backoff() -> None:
    crashed = [view(0, R), view(1, X, retry_at=5.0, failures=2)]
    assert decide(crashed, 2, 4.9, POLICY) == []
    assert decide(crashed, 2, 5.0, POLICY) == [Action(Kind.RESTART, 1)]


def test_safety_kills_stuck_unhealthy_and_slow_draining_replicas() -> None:
    replicas = [
        view(0, S, since=0.0),
        view(1, U, health_failures=POLICY.unhealthy_after),
        view(2, U, health_failures=1),
        view(3, D, since=0.0),
        view(4, R),
    ]
    assert decide(replicas, 4, 5.0, POLICY) == [Action(Kind.KILL, 1)]
    late = decide(replicas, 4, 11.0, POLICY)
    assert {a.replica for a in late if a.kind is Kind.KILL} == {0, 1, 3}


def test_rolling_update_replaces_one_replica_at_a_time() -> None:
    """Walk a 2-replica roll step by step: never more than 3 live, never fewer than 2 ready."""
    replicas = {0: view(0, R, current=False), 1: view(1, R, current=False)}
    next_id, now, log = 2, 0.0, []
    for _ in range(20):
        actions = decide(list(replicas.values()), 2, now, POLICY)
        if rollout_done(list(replicas.values()), 2):
            break
        for a in actions:
            log.append(a.kind)
            if a.kind is Kind.START:
                replicas[next_id] = view(next_id, S, since=now)
                next_id += 1
            elif a.kind is Kind.TERMINATE:
                assert a.replica is not None and not replicas[a.replica].current
                replicas[a.replica] = replace(replicas[a.replica], state=D, since=now)
        if not actions:  # the world moves on: starting -> ready, draining -> gone
            for id, r in list(replicas.items()):
                if r.state is S:
                    replicas[id] = replace(r, state=R, since=now)
                elif r.state is D:
                    del replicas[id]
        live = [r for r in replicas.values() if r.state is not D]
        assert len(live) <= 3 and sum(r.state in (R, D) for r in replicas.values()) >= 2
        now += 1
    assert rollout_done(list(replicas.values()), 2)
    assert log == [Kind.START, Kind.TERMINATE, Kind.START, Kind.TERMINATE]


def test_roll_waits_for_the_new_replica_and_for_the_old_one_to_exit() -> None:
    old = [view(0, R, current=False), view(1, R, current=False)]
    assert decide([*old, view(2, S)], 2, 1.0, POLICY) == []
    assert decide([*old, view(2, X, retry_at=9.0)], 2, 1.0, POLICY) == []  # a broken new version
    assert decide([old[1], view(0, D), view(2, R)], 2, 1.0, POLICY) == []


def test_an_old_replica_crashing_mid_roll_is_dropped_and_replaced_by_a_new_one() -> None:
    replicas = [view(0, X, current=False), view(1, R, current=False), view(2, R)]
    assert decide(replicas, 2, 1.0, POLICY) == [Action(Kind.REMOVE, 0), Action(Kind.START)]


def test_scale_down_and_stop_drain_the_surplus_not_ready_first() -> None:
    replicas = [view(0, R), view(1, S), view(2, R)]
    assert decide(replicas, 2, 1.0, POLICY) == [Action(Kind.TERMINATE, 1)]
    stop = decide([view(0, R), view(1, X, retry_at=50.0)], 0, 1.0, POLICY)
    assert stop == [Action(Kind.REMOVE, 1), Action(Kind.TERMINATE, 0)]


def test_deployment_state() -> None:
    assert deployment_state([view(0, R), view(1, R)], 2, POLICY) is DeploymentState.READY
    assert deployment_state([view(0, R), view(1, S)], 2, POLICY) is DeploymentState.DEGRADED
    assert deployment_state([view(0, S)], 1, POLICY) is DeploymentState.PENDING
    crashing = [view(0, X, failures=POLICY.failed_after)]
    assert deployment_state(crashing, 1, POLICY) is DeploymentState.FAILED
    assert deployment_state([], 1, POLICY, stopped=True) is DeploymentState.STOPPED


def test_spec_options_round_trip_through_a_replica_command_line(tmp_path: Path) -> None:
    spec = DeploymentSpec("digits", tmp_path, "3", token_hashes=(hash_token("t"),))
    argv = ["--fd", "5", *spec.replica_args(), "--admin-fd", "7", "--drain-seconds", "1"]
    assert without_placement(argv) == spec.replica_args()
    assert option(argv, "--version") == "3" and option(argv, "--fd") == "5"
    assert hash_token("t") not in " ".join(argv)  # hashes travel in the environment only
    assert replace(spec, replicas=5).replica_args() == spec.replica_args()  # scaling: no roll
    assert "--max-batch-rows" not in argv  # unset caps: replicas from before them still match
    capped = replace(spec, max_batch_rows=64, max_tensor_elements=4096).replica_args()
    assert option(capped, "--max-batch-rows") == "64"
    assert option(capped, "--max-tensor-elements") == "4096"
    bad_specs = ({"name": "Bad Name"}, {"runtime": "tf"}, {"token_hashes": ("xyz",)})
    for bad in (*bad_specs, {"max_batch_rows": 0}, {"max_tensor_elements": -1}):
        with pytest.raises(InvalidInput):
            replace(spec, **bad)


# -- replica access and drain ------------------------------------------------------------------


def test_token_hashes_from_environment_and_a_reloaded_file(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "tokens"
    path.write_text(f"# allowed\n{hash_token('file-1')}\n")
    path.chmod(0o600)
    env = {"NIMBUS_REPLICA_TOKEN_HASHES": f"{hash_token('env-1')},{hash_token('env-2')}"}
    auth = TokenHashes(parse_hashes(env["NIMBUS_REPLICA_TOKEN_HASHES"]), path, clock=lambda: now[0])
    assert auth("env-2") and auth("file-1") and not auth("nope") and not auth("")
    path.write_text(f"{hash_token('file-2')}\n")  # revoke file-1, allow file-2
    assert auth("file-1")  # not looked at again yet
    now[0] += 1.0
    assert auth("file-2") and not auth("file-1") and auth("env-1")
    path.chmod(0o644)  # unsafe: allows nothing from the file any more
    now[0] += 1.0
    assert not auth("file-2") and auth("env-1")
    with pytest.raises(InvalidInput):
        read_hashes_file(path)
    with pytest.raises(InvalidInput):
        parse_hashes("not-a-hash")
    assert not TokenHashes()("anything")  # no hashes: fail closed


def test_drain_gate_closes_connections_and_fails_readiness() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(gate: DrainGate, path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        await gate({"type": "http", "path": path}, None, send)  # type: ignore[arg-type]
        return sent

    gate = DrainGate(app)
    assert asyncio.run(call(gate, "/v2/health/ready"))[0]["headers"] == []
    gate.draining = True
    ready = asyncio.run(call(gate, "/v2/health/ready"))[0]
    infer = asyncio.run(call(gate, "/v2/models/m/infer"))[0]
    assert ready["status"] == 503 and (b"connection", b"close") in ready["headers"]
    assert infer["status"] == 200 and infer["headers"] == [(b"connection", b"close")]


# -- the supervisor loop, with fake processes ---------------------------------------------------


@dataclass
class FakeProcess:
    pid: int
    argv: list[str]
    env: dict[str, str]
    code: int | None = None
    signals: list[int] = field(default_factory=list)

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        if self.code is None:
            self.signals.append(sig)
            self.code = -sig

    def close(self) -> None:
        pass


class Fakes:
    """Spawner, probe and clock for a Supervisor; every spawned replica is ready unless its
    health port is in ``down``."""

    def __init__(self) -> None:
        self.now = 100.0
        self.spawned: list[FakeProcess] = []
        self.down: set[int] = set()
        self.only_ready: set[int] | None = None
        self.fail_spawn = False
        self.supervisors: list[Supervisor] = []

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        pass_fds: Sequence[int],
        log_path: Path | None,
    ) -> FakeProcess:
        if self.fail_spawn:
            raise OSError("no more processes")
        process = FakeProcess(1000 + len(self.spawned), list(argv), dict(env))
        self.spawned.append(process)
        return process

    def probe(self, host: str, port: int, timeout: float) -> bool:
        if self.only_ready is not None:
            return port in self.only_ready
        return port not in self.down

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def supervisor(self) -> Supervisor:
        sup = Supervisor(
            spawner=self.spawn,
            probe=self.probe,
            clock=lambda: self.now,
            sleep=self.sleep,
            policy=POLICY,
            env={"PATH": "/bin"},
        )
        self.supervisors.append(sup)
        return sup

    def live(self) -> list[FakeProcess]:
        return [p for p in self.spawned if p.code is None]


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    made = Fakes()
    yield made
    for sup in made.supervisors:  # closes the deployments' listening sockets
        sup.close()


def fake_spec(version: str = "1", **kw: Any) -> DeploymentSpec:
    return DeploymentSpec("digits", Path("/models/digits"), version, **kw)


def test_start_spawns_replicas_on_one_shared_socket(fakes: Fakes) -> None:
    sup = fakes.supervisor()
    token = hash_token("secret")
    endpoint = sup.start(fake_spec(replicas=2, token_hashes=(token,)))
    port = int(endpoint.rsplit(":", 1)[1])
    assert port_in_use("127.0.0.1", port)
    assert len(fakes.spawned) == 2
    first, second = fakes.spawned
    assert option(first.argv, "--fd") == option(second.argv, "--fd")
    assert option(first.argv, "--admin-fd") and "--public" not in first.argv
    assert first.env == {"PATH": "/bin", "NIMBUS_REPLICA_TOKEN_HASHES": token}
    assert sup.status("digits").state is DeploymentState.PENDING
    sup.tick()
    status = sup.status("digits")
    assert status.state is DeploymentState.READY and status.pids == [1000, 1001]
    assert {r.port for r in status.replicas} != {None}
    with pytest.raises(Conflict):
        sup.start(fake_spec())
    sup.stop("digits")
    assert [p.signals for p in fakes.spawned] == [[signal.SIGTERM]] * 2
    assert sup.names() == [] and not port_in_use("127.0.0.1", port)


def test_crash_restarts_at_once_then_with_backoff_then_fails(fakes: Fakes) -> None:
    sup = fakes.supervisor()
    sup.start(fake_spec(), wait=1)
    fakes.spawned[0].code = -9
    sup.tick()
    assert len(fakes.spawned) == 2 and sup.status("digits").replicas[0].restarts == 1
    fakes.spawned[1].code = 1  # crashes again before it had been stable
    sup.tick()
    status = sup.status("digits")
    assert len(fakes.spawned) == 2 and status.replicas[0].state is ReplicaState.EXITED
    assert status.replicas[0].exit_code == 1
    fakes.now += POLICY.backoff_base
    sup.tick()
    assert len(fakes.spawned) == 3
    fakes.spawned[2].code = 1
    sup.tick()
    assert sup.status("digits").state is DeploymentState.FAILED
    fakes.now += 10
    sup.tick()
    sup.tick()  # the fourth one comes up and stays up: its failures are forgiven
    fakes.now += POLICY.stable_after
    sup.tick()
    assert sup.status("digits").state is DeploymentState.READY
    fakes.spawned[3].code = -9
    sup.tick()
    assert len(fakes.spawned) == 5  # again straight back


def test_unhealthy_replica_is_killed_and_replaced(fakes: Fakes) -> None:
    sup = fakes.supervisor()
    sup.start(fake_spec(), wait=1)
    fakes.down.add(sup.status("digits").replicas[0].port or 0)
    for _ in range(POLICY.unhealthy_after):
        sup.tick()
    assert sup.status("digits").replicas[0].state is ReplicaState.UNHEALTHY
    sup.tick()
    assert fakes.spawned[0].signals == [signal.SIGKILL]
    sup.tick()
    assert len(fakes.spawned) == 2


def test_update_rolls_one_replica_at_a_time(fakes: Fakes) -> None:
    sup = fakes.supervisor()
    sup.start(fake_spec(replicas=2), wait=1)
    sup.update("digits", fake_spec("2", replicas=2))
    assert len(fakes.spawned) == 3 and all(not p.signals for p in fakes.spawned)
    sup.tick()  # the new one is ready: drain one old
    assert [bool(p.signals) for p in fakes.spawned] == [True, False, False]
    status = sup.update("digits", fake_spec("2", replicas=2), wait=5)
    assert [r.model_version for r in status.replicas] == ["2", "2"]
    assert [p.signals for p in fakes.spawned] == [[signal.SIGTERM]] * 2 + [[]] * 2
    assert option(fakes.spawned[-1].argv, "--version") == "2"
    with pytest.raises(InvalidInput):
        sup.update("digits", fake_spec("3", port=1))


def test_roll_to_a_version_that_never_gets_ready_keeps_the_old_one(fakes: Fakes) -> None:
    sup = fakes.supervisor()
    sup.start(fake_spec(), wait=1)
    fakes.only_ready = {sup.status("digits").replicas[0].port or 0}  # no new one ever is
    sup.update("digits", fake_spec("2"))
    fakes.now += POLICY.start_timeout + 1
    sup.tick()
    assert fakes.spawned[1].signals == [signal.SIGKILL]
    assert fakes.spawned[0].signals == []  # the old replica keeps serving


def test_spawn_failure_is_retried(fakes: Fakes) -> None:
    sup = fakes.supervisor()
    fakes.fail_spawn = True
    sup.start(fake_spec())
    assert sup.status("digits").replicas[0].state is ReplicaState.EXITED
    fakes.fail_spawn = False
    sup.tick()
    assert not fakes.spawned
    fakes.now += POLICY.backoff_base
    sup.tick()
    sup.tick()
    assert sup.status("digits").state is DeploymentState.READY


# -- real replica processes --------------------------------------------------------------------


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(
        log_dir=tmp_path / "logs",
        policy=Policy(start_timeout=30, drain_timeout=10),
        drain_seconds=1.0,
        probe_timeout=2.0,
    )
    ticker = Ticker("supervisor", 0.1, sup.tick)
    ticker.start()
    yield sup
    ticker.stop()
    sup.close()


def real_spec(model_dir: Path, version: str = "1", **kw: Any) -> DeploymentSpec:
    return DeploymentSpec("cnn", model_dir, version, **{"public": True, **kw})


def test_sigkilled_replica_is_restarted_while_the_endpoint_answers(
    supervisor: Supervisor, image_model_dir: Path
) -> None:
    endpoint = supervisor.start(real_spec(image_model_dir, replicas=2), wait=30)
    before = supervisor.status("cnn")
    assert before.state is DeploymentState.READY, before
    victim = before.replicas[0].pid
    assert victim is not None
    # A request in flight on the killed replica's connection is lost with it: the client
    # retries once, as any client of a load-balanced service does.
    with Load(endpoint, "cnn", retries=1) as load:
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            status = supervisor.status("cnn")
            return status.state is DeploymentState.READY and victim not in status.pids

        eventually(replaced)
        time.sleep(0.3)
    assert not load.failures and len(load.versions) > 10
    after = supervisor.status("cnn")
    assert sorted(r.restarts for r in after.replicas) == [0, 1]
    assert after.port == before.port


def test_rolling_update_under_load_fails_no_request(
    supervisor: Supervisor, image_model_dir: Path
) -> None:
    endpoint = supervisor.start(real_spec(image_model_dir, "1", replicas=2), wait=30)
    old = set(supervisor.status("cnn").pids)
    with Load(endpoint, "cnn") as load:
        time.sleep(0.3)
        status = supervisor.update("cnn", real_spec(image_model_dir, "2", replicas=2), wait=60)
        time.sleep(0.3)
    assert not load.failures, load.failures[:5]
    assert set(load.versions) == {"1", "2"} and load.versions[-1] == "2"
    assert status.state is DeploymentState.READY
    assert [r.model_version for r in status.replicas] == ["2", "2"]
    assert not old & set(status.pids) and not any(alive(pid) for pid in old)


ORPHANING_CONTROL_PLANE = """
import json, sys, time
from pathlib import Path
from nimbus.serving.fleet.deployment import DeploymentSpec
from nimbus.serving.fleet.supervisor import Supervisor
sup = Supervisor(log_dir=Path(sys.argv[2]))
sup.start(DeploymentSpec("cnn", Path(sys.argv[1]), "1", replicas=2, public=True), wait=30)
print(json.dumps(sup.status("cnn").to_dict()), flush=True)
time.sleep(600)
"""


def orphaned_deployment(model_dir: Path, log_dir: Path) -> dict[str, Any]:
    """Start a deployment from a control plane in another process, then SIGKILL that process."""
    with subprocess.Popen(
        [sys.executable, "-c", ORPHANING_CONTROL_PLANE, str(model_dir), str(log_dir)],
        stdout=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None
            status: dict[str, Any] = json.loads(proc.stdout.readline())
        finally:
            proc.kill()
    assert status["state"] == "ready", status
    return status


def test_adopt_after_control_plane_sigkill(
    supervisor: Supervisor, image_model_dir: Path, tmp_path: Path
) -> None:
    status = orphaned_deployment(image_model_dir, tmp_path / "logs")
    pids = [r["pid"] for r in status["replicas"]]
    assert all(alive(pid) for pid in pids)  # they outlive their control plane
    spec = real_spec(image_model_dir, port=status["port"], replicas=2)
    with Load(status["endpoint"], "cnn", retries=1) as load:
        endpoint = supervisor.adopt("cnn", spec, [*pids, os.getpid()], wait=10)
        assert endpoint == status["endpoint"]
        adopted = supervisor.status("cnn")
        assert adopted.state is DeploymentState.READY and sorted(adopted.pids) == sorted(pids)
        os.kill(pids[0], signal.SIGKILL)  # an adopted replica crashes: replaced as usual
        eventually(lambda: pids[0] not in supervisor.status("cnn").pids)
        eventually(lambda: supervisor.status("cnn").state is DeploymentState.READY)
        time.sleep(0.3)
    assert not load.failures and len(load.versions) > 10
    supervisor.stop("cnn")
    assert not any(alive(pid) for pid in pids) and not port_in_use("127.0.0.1", status["port"])


def test_adopt_finds_replicas_dead_and_starts_fresh_ones_on_the_same_port(
    supervisor: Supervisor, image_model_dir: Path, tmp_path: Path
) -> None:
    status = orphaned_deployment(image_model_dir, tmp_path / "logs")
    pids = [r["pid"] for r in status["replicas"]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: not any(alive(pid) for pid in pids))
    spec = real_spec(image_model_dir, port=status["port"], replicas=2)
    endpoint = supervisor.adopt("cnn", spec, pids, wait=30)
    fresh = supervisor.status("cnn")
    assert fresh.state is DeploymentState.READY and not set(fresh.pids) & set(pids)
    response = httpx.post(f"{endpoint}/v2/models/cnn/infer", json=body())
    assert response.status_code == 200


def test_replicas_require_a_token_unless_public(
    supervisor: Supervisor, image_model_dir: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(hash_token("from-file") + "\n")
    token_file.chmod(0o600)
    spec = real_spec(
        image_model_dir, public=False, token_hashes=(hash_token("from-env"),), token_file=token_file
    )
    endpoint = supervisor.start(spec, wait=30)
    assert supervisor.status("cnn").state is DeploymentState.READY

    def infer(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{endpoint}/v2/models/cnn/infer"
        return httpx.post(url, json=body(), headers=headers).status_code

    assert infer(None) == 401 and infer("wrong") == 401
    assert infer("from-env") == 200 and infer("from-file") == 200
    assert httpx.get(f"{endpoint}/v2/health/ready").status_code == 200
    replica = supervisor.status("cnn").replicas[0].pid
    assert replica is not None
    environ = Path(f"/proc/{replica}/environ").read_bytes().split(b"\0")
    argv = Path(f"/proc/{replica}/cmdline").read_bytes()
    assert f"NIMBUS_REPLICA_TOKEN_HASHES={hash_token('from-env')}".encode() in environ
    assert hash_token("from-env").encode() not in argv
    token_file.write_text(hash_token("rotated") + "\n")  # revoke without a restart
    eventually(lambda: infer("from-file") == 401 and infer("rotated") == 200, 5)
    supervisor.update("cnn", replace(spec, public=True), wait=30)
    assert infer(None) == 200
