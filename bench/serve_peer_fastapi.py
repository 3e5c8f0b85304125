"""The peer a user writes first: FastAPI + uvicorn, one PyTorch forward per request.

It accepts the same OIP v2 JSON infer body as ``nimbus serve`` (pydantic-validated, the usual
FastAPI way) and answers ``probabilities``, so the same load generator can drive both:

    python bench/serve_peer_fastapi.py MODEL_DIR [--port 8001]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from safetensors.torch import load_file

from nimbus.runtime.architectures import build_model


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]


def create_peer(model_dir: Path, name: str = "cnn") -> FastAPI:
    spec = json.loads((model_dir / "spec.json").read_text())
    model = build_model(spec).eval()
    model.load_state_dict(load_file(str(model_dir / "weights.safetensors")))
    dtypes = {"UINT8": torch.uint8, "FP32": torch.float32, "INT64": torch.int64}
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    def infer(model_name: str, request: InferRequest) -> dict[str, Any]:
        if model_name != name:
            raise HTTPException(404, f"unknown model {model_name}")
        tensor = request.inputs[0]
        x = torch.tensor(tensor.data, dtype=dtypes[tensor.datatype]).reshape(tensor.shape)
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
    parser.add_argument("--port", type=int, default=8001)
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
