"""``nimbus serve MODEL_DIR``: serve a model directory on its own, at the edge.

No control plane, no database, no token: the model is public unless ``--token-file`` names a
file (mode 0600) of SHA-256 hashes of the tokens allowed. Speaks the same OIP v2 as a
deployment, so ``tritonclient.http`` and ``nimbus predict``-style clients work unchanged.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from nimbus.cli.common import JsonOption, print_json


class Runtime(StrEnum):
    onnx = "onnx"
    torch = "torch"


def serve(
    model_dir: Annotated[
        Path, typer.Argument(help="A model directory: spec.json, model.onnx, weights.safetensors.")
    ],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    name: Annotated[
        str | None, typer.Option(help="Model name in the URLs (default: the directory's name).")
    ] = None,
    version: Annotated[str, typer.Option(help="Model version to report.")] = "1",
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest dynamic batch.")] = 32,
    max_delay_ms: Annotated[
        float, typer.Option(min=0, help="Longest wait for a batch to fill (ms).")
    ] = 2.0,
    runtime: Annotated[Runtime, typer.Option(help="Inference runtime.")] = Runtime.onnx,
    threads: Annotated[int, typer.Option(min=1, help="Intra-op threads of the runtime.")] = 1,
    token_file: Annotated[
        Path | None,
        typer.Option(help="Require a bearer token whose SHA-256 is in this file (mode 0600)."),
    ] = None,
    max_batch_rows: Annotated[
        int, typer.Option(min=1, help="Most rows in one request (413 past it).")
    ] = 1024,
    max_tensor_elements: Annotated[
        int, typer.Option(min=1, help="Most elements in one input tensor (413 past it).")
    ] = 16 * 1024 * 1024,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client has to send request headers.")
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a client has to send a body (more for large ones)."),
    ] = 20.0,
    as_json: JsonOption = False,
) -> None:
    """Serve MODEL_DIR over the Open Inference Protocol v2 until interrupted."""
    # Imported here, not at the top: the serving stack (numpy, uvicorn, the runtimes) would
    # otherwise slow down every other command's start-up.
    from nimbus.modelformat.spec import ModelSpec
    from nimbus.serving.access import TokenHashes, read_hashes_file
    from nimbus.serving.app import serve as run_server
    from nimbus.serving.timeouts import ReadTimeouts

    ModelSpec.load(model_dir)  # a wrong directory fails here, before any URL is printed
    auth = None
    if token_file is not None:
        read_hashes_file(token_file)  # unreadable or unsafe: refuse to start
        auth = TokenHashes(file=token_file)
    model = name or model_dir.resolve().name
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if as_json:
        print_json(
            {
                "url": url,
                "model": model,
                "version": version,
                "infer": f"{url}/v2/models/{model}/infer",
                "public": auth is None,
            },
            line=True,
        )
    else:
        typer.echo(f"Serving '{model}' version {version} at {url} (Ctrl+C stops it)")
    # uvicorn re-raises the Ctrl+C it has handled, once the server is shut down.
    with contextlib.suppress(KeyboardInterrupt):
        run_server(
            model_dir,
            host,
            port,
            name=model,
            version=version,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            runtime=str(runtime),
            threads=threads,
            auth=auth,
            public=auth is None,
            max_batch_rows=max_batch_rows,
            max_tensor_elements=max_tensor_elements,
            timeouts=ReadTimeouts(header_timeout=header_timeout, body_timeout=body_timeout),
        )
