"""``nimbus deploy NAME MODEL[:V|@ALIAS]``: serve a registered model; prints the endpoint."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from nimbus.cli.common import JsonOption, client, emit
from nimbus.cli.deployments import ModelArgument, NameArgument, TimeoutOption, WaitOption


def deploy(
    name: NameArgument,
    model: ModelArgument,
    replicas: Annotated[int, typer.Option(min=1, max=32, help="Replica processes")] = 1,
    max_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Largest dynamic batch [default: server's]")
    ] = None,
    max_delay_ms: Annotated[
        float | None, typer.Option(min=0, help="How long a batch waits to fill [default: server's]")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(metavar="onnx|torch", help="Inference runtime [default: onnx]")
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="Serve without a token")] = False,
    max_batch_rows: Annotated[
        int | None, typer.Option(min=1, help="Most rows per infer request [default: 1024]")
    ] = None,
    max_tensor_elements: Annotated[
        int | None,
        typer.Option(min=1, help="Most elements per input tensor [default: 16777216]"),
    ] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Deploy MODEL as an online inference service named NAME and print its endpoint URL."""
    from nimbus.wire.deployments import RUNTIMES

    if runtime is not None and runtime not in RUNTIMES:
        raise typer.BadParameter(f"use one of {', '.join(RUNTIMES)}", param_hint="'--runtime'")
    with client() as api:
        deployment = api.create_deployment(
            name,
            model,
            replicas=replicas,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            runtime=runtime,
            public=public or None,
            max_batch_rows=max_batch_rows,
            max_tensor_elements=max_tensor_elements,
        )
        if wait:
            deployment = api.wait_deployment(name, timeout=timeout)

    def render(out: Console) -> None:
        err = Console(stderr=True, highlight=False)
        err.print(
            f"Deployed {deployment.model}:{deployment.model_version} as {name} "
            f"({deployment.state}); OIP v2 at "
            f"{deployment.endpoint}/v2/models/{name}",
            markup=False,
        )
        out.print(deployment.endpoint, markup=False, soft_wrap=True)

    emit(deployment, as_json, render)
