"""What a deployment is to the supervisor: its spec, its states, and the status it exposes.

Plain data, no processes and no SQL: the control plane persists :class:`DeploymentStatus`
(endpoint port, replica pids and ports, versions) and hands a :class:`DeploymentSpec` back to
:meth:`Supervisor.adopt` after a restart.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from nimbus.errors import InvalidInput
from nimbus.names import validate_name

REPLICA_MODULE = "nimbus.serving.fleet.replica"
RUNTIMES = ("onnx", "torch")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ReplicaState(StrEnum):
    """Where one replica process stands."""

    STARTING = "starting"  # spawned (or adopted), not yet answering /v2/health/ready
    READY = "ready"
    UNHEALTHY = "unhealthy"  # alive and was ready, now failing health checks
    DRAINING = "draining"  # sent SIGTERM: finishing its requests, then exits
    EXITED = "exited"  # died unasked; restarted after its backoff


class DeploymentState(StrEnum):
    """The deployment as a whole (the ``state`` of docs/api.md)."""

    PENDING = "pending"  # no replica ready yet
    READY = "ready"  # as many ready replicas as asked for
    DEGRADED = "degraded"  # some, not all
    FAILED = "failed"  # none ready and replicas keep failing
    STOPPED = "stopped"


@dataclass(frozen=True)
class DeploymentSpec:
    """How to serve one model: what the control plane asks the supervisor for.

    ``port`` 0 picks a free port at :meth:`Supervisor.start`; keep the chosen one (from the
    status) for :meth:`Supervisor.adopt`. Unless ``public``, callers need a bearer token whose
    SHA-256 is in ``token_hashes`` (handed to replicas in their environment) or in the file
    ``token_file`` (mode 0600, re-read when it changes: the way to revoke without a restart).
    """

    name: str
    model_dir: Path
    version: str = "1"
    replicas: int = 1
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    runtime: str = "onnx"
    threads: int = 1
    public: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    token_file: Path | None = None
    token_hashes: tuple[str, ...] = field(default=(), repr=False)
    # Caps on one request (None: the replica's defaults); see serving.protocol.RequestLimits.
    max_batch_rows: int | None = None
    max_tensor_elements: int | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "deployment name")
        if self.replicas < 0:
            raise InvalidInput("replicas must be >= 0")
        if self.max_batch_size < 1 or self.max_delay_ms < 0 or self.threads < 1:
            raise InvalidInput("max_batch_size and threads must be >= 1, max_delay_ms >= 0")
        if self.runtime not in RUNTIMES:
            raise InvalidInput(f"unknown runtime {self.runtime!r}; choose one of {RUNTIMES}")
        if any(
            cap is not None and cap < 1 for cap in (self.max_batch_rows, self.max_tensor_elements)
        ):
            raise InvalidInput("max_batch_rows and max_tensor_elements must be >= 1")
        if not 0 <= self.port < 65536:
            raise InvalidInput(f"invalid port {self.port}")
        if any(not _SHA256_RE.match(h) for h in self.token_hashes):
            raise InvalidInput("token_hashes must be lower-case hex SHA-256 digests")
        if not str(self.version) or any(c.isspace() for c in str(self.version)):
            raise InvalidInput(f"invalid version {self.version!r}")

    def replica_args(self) -> list[str]:
        """The replica's command-line options, file descriptors aside.

        Two replicas run the same thing exactly when these are equal: it is how the
        supervisor tells replicas to roll from those to keep, adopted ones included.
        """
        args = [
            "--model-dir",
            str(Path(self.model_dir).absolute()),
            "--name",
            self.name,
            "--version",
            str(self.version),
            "--max-batch-size",
            str(self.max_batch_size),
            "--max-delay-ms",
            repr(float(self.max_delay_ms)),
            "--runtime",
            self.runtime,
            "--threads",
            str(self.threads),
        ]
        # Only when set: replicas started before these options existed keep matching.
        if self.max_batch_rows is not None:
            args += ["--max-batch-rows", str(self.max_batch_rows)]
        if self.max_tensor_elements is not None:
            args += ["--max-tensor-elements", str(self.max_tensor_elements)]
        if self.public:
            args.append("--public")
        if self.token_file is not None:
            args += ["--token-file", str(Path(self.token_file).absolute())]
        if self.token_hashes:
            # Not the hashes themselves (argv is world-readable): their fingerprint, so a
            # change of tokens rolls the replicas like any other change.
            args += ["--tokens-id", _fingerprint(self.token_hashes)]
        return args


# Replica options that say where and how it runs, not what it serves.
PLACEMENT_FLAGS = (
    "--fd",
    "--admin-fd",
    "--drain-seconds",
    "--home",
    "--control-plane",
    "--orphan-seconds",
)


def option(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in a replica's options (None when absent)."""
    for name, value in itertools.pairwise(args):
        if name == flag:
            return value
    return None


def without_placement(args: Sequence[str]) -> list[str]:
    """A replica's options less :data:`PLACEMENT_FLAGS` (what :meth:`DeploymentSpec.replica_args`
    gives for the spec it runs)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in PLACEMENT_FLAGS:
            skip = True
        else:
            out.append(arg)
    return out


def _fingerprint(hashes: Sequence[str]) -> str:
    return hashlib.sha256(",".join(sorted(hashes)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as the control plane sees it; ``port`` is its private health port."""

    index: int
    pid: int | None
    port: int | None
    state: ReplicaState
    restarts: int
    model_version: str
    exit_code: int | None = None


@dataclass(frozen=True)
class DeploymentStatus:
    """A deployment as the control plane persists and shows it."""

    name: str
    state: DeploymentState
    endpoint: str
    port: int
    model_version: str
    replicas: tuple[ReplicaStatus, ...]

    @property
    def pids(self) -> list[int]:
        """The live replicas' pids: what :meth:`Supervisor.adopt` needs after a restart."""
        return [r.pid for r in self.replicas if r.pid is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (enums as their values)."""
        data = asdict(self)
        data["state"] = str(self.state)
        for replica in data["replicas"]:
            replica["state"] = str(replica["state"])
        return data
