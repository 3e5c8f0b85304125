"""The Ray cluster the ``ray`` executor runs attempts on: the connection, its nodes, and
the submit-time check that some node could ever run a job.

Ray is imported here only when the ``ray`` executor is configured (the ``ray`` extra), in
the Ray driver: a child process of the control plane (:mod:`.executors.ray_bridge`).
Ray's token authentication is Ray's: the token comes from ``RAY_AUTH_TOKEN`` or
``RAY_AUTH_TOKEN_PATH`` in the server's environment (the child inherits it), as Ray reads
it. A driver whose head stays unreachable is ended by Ray after
``RAY_gcs_rpc_server_reconnect_timeout_s``: the driver waits for a head that comes back,
so the connection sets that far in the future unless it was set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from nimbus.errors import InvalidInput, Unavailable
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Resources

NAMESPACE = "nimbus"
NODES_TTL_SECONDS = 5.0  # how often the nodes are listed
FRESH_WAIT_SECONDS = 2.0
# No listing for this long: the head is taken as unreachable (nothing new is started).
SILENT_SECONDS = 3 * NODES_TTL_SECONDS
# After connecting (to a head started anew, say), how long nodes have to join before a job
# that only they could run is taken as having none (a worker node's 'ray start' can take
# tens of seconds on a busy machine).
REJOIN_SECONDS = 60.0
log = logging.getLogger(__name__)
_RECONNECT = "RAY_gcs_rpc_server_reconnect_timeout_s"
_lock = threading.Lock()
_connected: RayCluster | None = None


@dataclass(frozen=True)
class RayNode:
    """One alive node of the cluster: its total resources (Ray's names: CPU, GPU, memory,
    and the custom ones) and those not held by any task, actor or placement group."""

    node_id: str
    address: str
    resources: dict[str, float]
    available: dict[str, float] = field(default_factory=dict)

    @property
    def head(self) -> bool:
        return "node:__internal_head__" in self.resources


def worker_demand(need: Resources) -> dict[str, float]:
    """What one worker of a job asks of a node, in Ray's resource names."""
    demand: dict[str, float] = {"CPU": need.cpus}
    if need.gpus:
        demand["GPU"] = float(need.gpus)
    if need.memory_bytes:
        demand["memory"] = float(need.memory_bytes)
    demand.update(need.custom)
    return demand


_SHOWN = {"CPU": "cpus", "GPU": "gpus", "memory": "memory"}


def check_feasible(need: Resources, nodes: list[RayNode]) -> None:
    """Refuse (400 naming the resource) a job no node could ever run: one worker's demand
    must fit some node, and ``workers`` of them must fit the cluster (on different nodes
    when ``spread``)."""
    demand = worker_demand(need)
    for name, amount in demand.items():
        most = max((node.resources.get(name, 0.0) for node in nodes), default=0.0)
        if amount > most + 1e-9:
            shown = _SHOWN.get(name, name)
            raise InvalidInput(
                f"no node of the Ray cluster has {amount:g} {shown} for a worker "
                f"(the most any node has: {most:g})",
                resource=shown,
            )
    fitting = [node for node in nodes if _fits(demand, node.resources)]
    if not fitting:
        names = ", ".join(sorted(_SHOWN.get(n, n) for n in demand))
        raise InvalidInput(
            f"no node of the Ray cluster has all of {names} one worker needs",
            resource=names,
        )
    if need.spread and len(fitting) < need.workers:
        raise InvalidInput(
            f"{need.workers} workers with --spread need as many nodes that can each run "
            f"one; the Ray cluster has {len(fitting)}",
            resource="workers",
        )
    slots = sum(_slots(demand, node.resources) for node in fitting)
    if slots < need.workers:
        raise InvalidInput(
            f"the Ray cluster can hold {slots} of the job's {need.workers} workers at most",
            resource="workers",
        )


def placeable(need: Resources, nodes: list[RayNode]) -> str | None:
    """Why no node of ``nodes`` could run ``need`` (:func:`check_feasible`'s reason), or
    None when some could."""
    try:
        check_feasible(need, nodes)
    except InvalidInput as exc:
        return exc.message
    return None


def gone_for(
    need: Resources, seen: list[tuple[RayNode, float]], connected: float, seconds: float
) -> str | None:
    """Why no node that could run ``need`` was listed alive within ``seconds`` (``seen``:
    each node and how many seconds ago it last was; ``connected``: for how long the
    listings go back, at least ``REJOIN_SECONDS`` to say), or None: a node that left for
    less long may be back (a restart, or a new head that its nodes rejoin)."""
    if connected < max(seconds, REJOIN_SECONDS):
        return None
    reason = placeable(need, [node for node, ago in seen if ago <= seconds])
    return None if reason is None else f"{reason}, none for {seconds:g} s"


def _fits(demand: dict[str, float], total: dict[str, float]) -> bool:
    return all(total.get(name, 0.0) + 1e-9 >= amount for name, amount in demand.items())


def _slots(demand: dict[str, float], total: dict[str, float]) -> int:
    return int(min(total.get(name, 0.0) / amount + 1e-9 for name, amount in demand.items()))


class RayCluster:
    """This process's connection to a Ray cluster (one per process: Ray has one driver
    state). Use :func:`connect`."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._nodes = _list_nodes()
        self._nodes_at = self.connected_at = time.monotonic()
        # Every node listed alive since, and when last: node id -> (node, time.monotonic()).
        self._seen = {node.node_id: (node, self._nodes_at) for node in self._nodes}
        self.head = _head(self._nodes)
        self._wanted = threading.Event()
        self._listed = threading.Condition()
        threading.Thread(target=self._keep_listing, name="ray-nodes", daemon=True).start()

    def _keep_listing(self) -> None:
        """List the nodes every few seconds (or when asked), off the callers' threads: with
        the head down a listing blocks until it is back, and a submit must not."""
        while True:
            self._wanted.wait(NODES_TTL_SECONDS)
            self._wanted.clear()
            try:
                nodes = _list_nodes()
            except Exception:
                log.warning("could not list the Ray cluster's nodes", exc_info=True)
                continue
            with self._listed:
                self._nodes, self._nodes_at = nodes, time.monotonic()
                self._seen.update((node.node_id, (node, self._nodes_at)) for node in nodes)
                self._listed.notify_all()

    def silent(self) -> float:
        """Seconds since the head last answered a listing."""
        return time.monotonic() - self._nodes_at

    def gone(self, need: Resources, seconds: float) -> str | None:
        """:func:`gone_for` of the nodes this connection saw."""
        now = time.monotonic()
        with self._listed:
            seen = [(node, now - at) for node, at in self._seen.values()]
        return gone_for(need, seen, now - self.connected_at, seconds)

    def restarted(self) -> bool:
        """Whether the cluster's head is another one than at connect: a new cluster at the
        same address, which this driver cannot use (it must be started anew)."""
        head = _head(self._nodes)
        return head is not None and self.head is not None and head != self.head

    def nodes(self, *, fresh: bool = False) -> list[RayNode]:
        """The alive nodes as last listed (at most a few seconds ago while the head is up);
        ``fresh``: listed anew, waited for up to ``FRESH_WAIT_SECONDS``."""
        if fresh:
            asked = time.monotonic()
            with self._listed:
                self._wanted.set()
                self._listed.wait_for(lambda: self._nodes_at >= asked, FRESH_WAIT_SECONDS)
        return self._nodes

    def check(self, need: Resources) -> None:
        """:func:`check_feasible` against the cluster as it is now (a refusal is checked
        again against a fresh listing: a node may have just joined)."""
        try:
            check_feasible(need, self.nodes())
        except InvalidInput:
            check_feasible(need, self.nodes(fresh=True))

    def capacity(self) -> Capacity:
        """The whole cluster's CPUs, GPUs and memory: what the scheduler may claim for at
        once (Ray places each worker on a node that fits it, and queues it until one does)."""
        nodes = self.nodes(fresh=True)
        return Capacity(
            cpus=sum(n.resources.get("CPU", 0.0) for n in nodes),
            gpus=int(sum(n.resources.get("GPU", 0.0) for n in nodes)),
            memory_bytes=int(sum(n.resources.get("memory", 0.0) for n in nodes)),
        )


def _head(nodes: list[RayNode]) -> str | None:
    return next((n.node_id for n in nodes if n.head), None)


def _list_nodes() -> list[RayNode]:
    from ray._private.state import available_resources_per_node  # a DeveloperAPI

    import ray

    available = available_resources_per_node()  # type: ignore[no-untyped-call]
    return [
        RayNode(
            n["NodeID"],
            n["NodeManagerAddress"],
            dict(n["Resources"]),
            # Ray leaves out what is all taken: none of it is available.
            {name: float(available.get(n["NodeID"], {}).get(name, 0.0)) for name in n["Resources"]},
        )
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive")
    ]


def connect(address: str | None) -> RayCluster:
    """Connect this process to the Ray cluster at ``address`` (once; later calls return the
    same connection). Raises :class:`~nimbus.errors.Unavailable` when it cannot."""
    global _connected
    with _lock:
        if _connected is not None:
            return _connected
        if not address:
            raise InvalidInput("the ray executor needs NIMBUS_RAY_ADDRESS (HOST:PORT of the head)")
        os.environ.setdefault(_RECONNECT, str(10 * 365 * 86400))
        try:
            import ray
        except ImportError:
            raise Unavailable("the ray executor needs Ray: pip install 'nimbus[ray]'") from None
        try:
            ray.init(
                address=address,
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as exc:
            raise Unavailable(f"cannot reach the Ray cluster at {address}: {exc}") from None
        _connected = RayCluster(address)
        return _connected
