"""Checkpoints as bytes without pickle: one safetensors file, JSON in its metadata.

A checkpoint state is a tree of dicts, lists, tensors and JSON scalars (a model's and
an optimizer's ``state_dict``, RNG states, counters). :func:`checkpoint_to_bytes` moves
every tensor into the safetensors body under a generated name and leaves a reference
``{"$tensor": name}`` in the tree; the tree itself is JSON in the header's
``__metadata__``. Dicts whose keys are not all strings (an optimizer's state is keyed
by parameter index) are kept as ``{"$items": [[key, value], ...]}`` so int keys come
back as ints. Loading parses JSON and raw tensor bytes only: nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from nimbus.errors import InvalidInput

FORMAT = "nimbus-checkpoint/1"
_META_KEY = "nimbus.checkpoint"
_TENSOR = "$tensor"
_ITEMS = "$items"
_SCALARS = (bool, int, float, str)


def checkpoint_to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise a checkpoint state (tensors, dicts, lists, JSON scalars) to bytes."""
    return freeze(state).to_bytes()


@dataclass(frozen=True)
class FrozenCheckpoint:
    """A checkpoint state taken apart: its tree (JSON-ready) and copies of its tensors.

    :func:`freeze` copies everything it keeps, so the caller may change its tensors at
    once; :meth:`to_bytes`, the costly part, may run later and in another thread."""

    tree: Any
    tensors: dict[str, torch.Tensor]

    def to_bytes(self) -> bytes:
        meta = json.dumps({"format": FORMAT, "state": self.tree}, allow_nan=True)
        return bytes(st_save(self.tensors, metadata={_META_KEY: meta}))


def freeze(state: dict[str, Any]) -> FrozenCheckpoint:
    """The state's tree and a CPU copy of each of its tensors (one copy each)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    return FrozenCheckpoint(tree, tensors)


def checkpoint_from_bytes(data: bytes) -> dict[str, Any]:
    """Rebuild a state written by :func:`checkpoint_to_bytes`; tensors come back on CPU."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_META_KEY])
        tensors = st_load(data)
    except Exception as exc:  # malformed input of any kind: one clear error
        raise InvalidInput(f"not a Nimbus checkpoint: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise InvalidInput(f"unsupported checkpoint format {meta.get('format')!r}")
    state = _decode(meta["state"], tensors)
    if not isinstance(state, dict):
        raise InvalidInput("a checkpoint state is a dict")
    return state


def clone_tree(obj: Any) -> Any:
    """A deep copy of a state tree whose tensors are detached CPU clones (a snapshot)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clone_tree(v) for v in obj]
    return obj


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        return {_TENSOR: name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not ({_TENSOR, _ITEMS} & obj.keys()):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        for key in obj:
            if key is not None and not isinstance(key, _SCALARS):
                raise InvalidInput(f"checkpoint dict key of type {type(key).__name__}")
        return {_ITEMS: [[k, _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, _SCALARS):
        return obj  # json writes NaN/Infinity too, and reads them back
    raise InvalidInput(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_ITEMS}:
            return {k: _decode(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj
