"""The stronger peer: what a competent user writes first with FastAPI.

An ``async def`` handler reads the body with ``await request.json()`` (no pydantic model) and
runs the PyTorch forward on the event loop with one torch thread; no batching. It accepts the
same OIP v2 JSON infer body as ``nimbus serve`` and answers ``probabilities``:

    python bench/serve_peer_async.py MODEL_DIR [--port 8002] [--name cnn]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from safetensors.torch import load_file

from nimbus.runtime.architectures import build_model


def create_peer(model_dir: Path, name: str = "cnn") -> FastAPI:
    """The app; the model is loaded once, in eval mode."""
    spec = json.loads((model_dir / "spec.json").read_text())
    model = build_model(spec).eval()
    model.load_state_dict(load_file(str(model_dir / "weights.safetensors")))
    dtypes = {"UINT8": torch.uint8, "FP32": torch.float32, "INT64": torch.int64}
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> dict[str, Any]:
        if model_name != name:
            raise HTTPException(404, f"unknown model {model_name}")
        tensor = (await request.json())["inputs"][0]
        x = torch.tensor(tensor["data"], dtype=dtypes[tensor["datatype"]]).reshape(tensor["shape"])
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=-1)
        return {
            "model_name": name,
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(probs.shape),
                    "data": probs.flatten().tolist(),
                }
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--name", default="cnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    uvicorn.run(
        create_peer(args.model_dir, args.name),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
