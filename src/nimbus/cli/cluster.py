"""``nimbus cluster status``: the control planes, the nodes and the queue (admin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console, Group
from rich.table import Table

from nimbus.cli.common import JsonOption, client, emit, human_bytes

if TYPE_CHECKING:
    from nimbus.wire.cluster import ClusterStatus, NodeAttempt, NodeResources

app = typer.Typer(help="The cluster: control planes, nodes, queue.", no_args_is_help=True)


def _resources(cpus: float, gpus: int, memory_bytes: int) -> str:
    return f"{cpus:g} CPU, {gpus} GPU, {human_bytes(memory_bytes)}"


def _offer(res: NodeResources) -> str:
    custom = "".join(f", {amount:g} {name}" for name, amount in res.custom.items())
    return _resources(res.cpus, res.gpus, res.memory_bytes) + custom


def _attempt(a: NodeAttempt, ray: bool) -> str:
    if not ray:
        return f"{a.job_id} ({a.tenant})"
    ranks = ",".join(str(r) for r in a.ranks)
    return f"{a.job_id}/{a.attempt_id} ({a.tenant}) worker {ranks}"


def _ray_nodes(status: ClusterStatus) -> Table:
    listed = status.nodes_listed_at
    when = f", listed {listed.strftime('%H:%M:%S UTC')}" if listed is not None else ""
    nodes = Table(title=f"Ray nodes{when}", title_justify="left")
    for column in ("node", "address", "resources", "available", "used by jobs", "running"):
        nodes.add_column(column)
    for node in status.nodes:
        nodes.add_row(
            node.name[:12] + (" (head)" if node.head else ""),
            node.address or "-",
            _offer(node.resources),
            _offer(node.available) if node.available is not None else "-",
            _offer(node.used),
            "\n".join(_attempt(a, True) for a in node.running) or "-",
        )
    return nodes


def cluster_tables(status: ClusterStatus) -> Group:
    """The tables: control planes, nodes (and what runs where; with Ray, what each node
    offers and has available, and the attempts still waiting for one), queue per tenant."""
    planes = Table(
        title=f"Control planes (executor {status.executor}, lease epoch {status.epoch})",
        title_justify="left",
    )
    for column in ("id", "address", "host", "leader", "alive", "last heartbeat"):
        planes.add_column(column)
    for plane in status.control_planes:
        planes.add_row(
            plane.id,
            plane.url,
            plane.hostname,
            "yes" if plane.leader else "",
            "yes" if plane.alive else "NO",
            plane.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
    if status.executor == "ray":
        nodes = _ray_nodes(status)
    else:
        nodes = Table(title="Nodes", title_justify="left")
        for column in ("node", "control plane", "resources", "used", "running"):
            nodes.add_column(column)
        for node in status.nodes:
            res, used = node.resources, node.used
            running = ", ".join(_attempt(a, False) for a in node.running) or "-"
            nodes.add_row(
                node.name,
                node.control_plane or "-",
                _resources(res.cpus, res.gpus, res.memory_bytes),
                _resources(used.cpus, used.gpus, used.memory_bytes),
                running,
            )
    tables: list[Table] = [planes, nodes]
    if status.waiting:
        waiting = Table(title="Waiting for a node (in Ray's queue)", title_justify="left")
        for column in ("attempt", "needs"):
            waiting.add_column(column)
        for a in status.waiting:
            waiting.add_row(_attempt(a, True), _resources(a.cpus, a.gpus, a.memory_bytes))
        tables.append(waiting)
    queue = Table(title="Queue", title_justify="left")
    for column in ("tenant", "queued", "running"):
        queue.add_column(column, justify="left" if column == "tenant" else "right")
    for depth in status.queue:
        queue.add_row(depth.tenant, str(depth.queued), str(depth.running))
    return Group(*tables, queue)


@app.command("status")
def status(as_json: JsonOption = False) -> None:
    """Show the control planes (which one leads the scheduler, their last heartbeat), the
    executor, the nodes with their resources and running jobs, and the queue (admin)."""
    with client() as api:
        found = api.cluster_status()

    def render(out: Console) -> None:
        out.print(cluster_tables(found))

    emit(found, as_json, render)
