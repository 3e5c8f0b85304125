"""``nimbus cluster status``: the control planes, the nodes and the queue (admin)."""

from __future__ import annotations

import typer
from rich.console import Console, Group
from rich.table import Table

from nimbus.cli.common import JsonOption, client, emit, human_bytes
from nimbus.wire.cluster import ClusterStatus

app = typer.Typer(help="The cluster: control planes, nodes, queue.", no_args_is_help=True)


def _resources(cpus: float, gpus: int, memory_bytes: int) -> str:
    return f"{cpus:g} CPU, {gpus} GPU, {human_bytes(memory_bytes)}"


def cluster_tables(status: ClusterStatus) -> Group:
    """Three tables: control planes, nodes (and what runs where), queue per tenant."""
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
    nodes = Table(title="Nodes", title_justify="left")
    for column in ("node", "control plane", "resources", "used", "running"):
        nodes.add_column(column)
    for node in status.nodes:
        res, used = node.resources, node.used
        running = ", ".join(f"{a.job_id} ({a.tenant})" for a in node.running) or "-"
        nodes.add_row(
            node.name,
            node.control_plane or "-",
            _resources(res.cpus, res.gpus, res.memory_bytes),
            _resources(used.cpus, used.gpus, used.memory_bytes),
            running,
        )
    queue = Table(title="Queue", title_justify="left")
    for column in ("tenant", "queued", "running"):
        queue.add_column(column, justify="left" if column == "tenant" else "right")
    for depth in status.queue:
        queue.add_row(depth.tenant, str(depth.queued), str(depth.running))
    return Group(planes, nodes, queue)


@app.command("status")
def status(as_json: JsonOption = False) -> None:
    """Show the control planes (which one leads the scheduler, their last heartbeat), the
    executor, the nodes with their resources and running jobs, and the queue (admin)."""
    with client() as api:
        found = api.cluster_status()

    def render(out: Console) -> None:
        out.print(cluster_tables(found))

    emit(found, as_json, render)
