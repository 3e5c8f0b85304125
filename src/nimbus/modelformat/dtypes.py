"""Tensor datatypes of a model's signature: the Open Inference Protocol's names, their numpy
dtypes (little-endian, as the binary tensor data extension requires) and ONNX Runtime's names
for them. Shared by the model format's checks and the inference server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Little-endian on the wire, as the binary tensor data extension requires.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

# ONNX Runtime's type names of the datatypes a model's inputs and outputs may have.
ORT_TYPES = {
    "tensor(uint8)": "UINT8",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",  # an imported text model's input (docs/import.md)
}


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of a model's signature; -1 in ``shape`` means any size (the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
