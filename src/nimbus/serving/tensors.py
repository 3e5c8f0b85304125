"""Tensor datatypes of the Open Inference Protocol and their conversion to and from numpy.

Numeric data is never validated element by element in Python: JSON arrays go through one
``np.asarray`` and a handful of vectorised checks, binary data through ``np.frombuffer``.
Only BYTES tensors (strings) are walked in Python, and never past the element count their
declared shape allows (itself capped: see :class:`nimbus.serving.protocol.RequestLimits`).
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from nimbus.modelformat.dtypes import DTYPES
from nimbus.serving.errors import ProtocolError

_LEN = struct.Struct("<I")


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def decode_json(
    data: Any, datatype: str, name: str, count: int, *, maybe_bools: bool = True
) -> np.ndarray:
    """Turn the ``data`` of a JSON tensor (nested or flat, row-major) into a flat array.

    ``maybe_bools=False`` says the document holds no ``true`` or ``false`` at all, which lets
    UINT8 data (images) skip numpy's walk over the list: ``bytes()`` converts and range-checks
    it in one C loop, but would take booleans for 0 and 1.
    """
    if not isinstance(data, list):
        raise ProtocolError(f"input '{name}': data must be a JSON array")
    if datatype == "BYTES":
        return _decode_json_bytes(data, name, count)
    target = DTYPES[datatype]
    try:
        flat = _flatten(data)
        if datatype == "UINT8" and not maybe_bools and len(flat) == count:
            octets = _octets(flat)
            if octets is not None:
                return octets
        arr = np.asarray(flat)
    except (TypeError, ValueError):
        raise ProtocolError(
            f"input '{name}': data is ragged (nested arrays of unequal depth or length)"
        ) from None
    if arr.size != count:
        raise ProtocolError(
            f"input '{name}': shape holds {count} elements but data holds {arr.size}"
        )
    arr = arr.reshape(-1)
    kind = arr.dtype.kind
    if kind in "fO" and target.kind in "iu" and count:
        # Beyond int64 numpy falls back to float64 or objects: decide from the Python values.
        arr = _wide_ints(data, target, datatype, name)
        kind = arr.dtype.kind
    if kind in "OUS":
        raise ProtocolError(f"input '{name}': data must hold only numbers for {datatype}")
    if datatype == "BOOL":
        if kind != "b" and count:
            raise ProtocolError(f"input '{name}': BOOL data must hold only true/false")
        return arr.astype(target, copy=False)
    if kind == "b" and count:
        raise ProtocolError(f"input '{name}': data holds true/false but {datatype} expects numbers")
    if target.kind in "iu":
        if count:
            _check_int_range(arr, target, datatype, name)
        return arr.astype(target, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(target, copy=False)
    bad = _first_non_finite(out)
    if bad is not None:
        raise ProtocolError(
            f"input '{name}': element {bad} ({arr[bad]!r}) is out of range for {datatype}"
        )
    return out


def decode_binary(buf: memoryview, datatype: str, name: str, count: int) -> np.ndarray:
    """Turn the raw bytes of a binary tensor into a flat array (zero-copy for numbers)."""
    if datatype == "BYTES":
        return _decode_binary_bytes(buf, name, count)
    dtype = DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise ProtocolError(
            f"input '{name}': binary_data_size is {len(buf)} bytes but {count} {datatype} "
            f"elements take {expected}"
        )
    arr = np.frombuffer(buf, dtype=dtype)
    if datatype == "BOOL":
        if count and arr.view(np.uint8).max() > 1:
            raise ProtocolError(f"input '{name}': BOOL bytes must be 0 or 1")
    elif dtype.kind == "f":
        bad = _first_non_finite(arr)
        if bad is not None:
            raise ProtocolError(
                f"input '{name}': element {bad} is {arr[bad]}; only finite numbers are accepted"
            )
    return arr


def encode_json(arr: np.ndarray, datatype: str) -> Any:
    """The ``data`` of a JSON output: a flat list (orjson serialises numpy arrays natively)."""
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.flat]
    return np.ascontiguousarray(arr.reshape(-1), dtype=DTYPES[datatype])


def encode_binary(arr: np.ndarray, datatype: str) -> bytes:
    """Raw little-endian bytes of an output; BYTES elements are 4-byte length-prefixed."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for v in arr.flat:
            raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists -> one flat list, row-major. numpy's own walk over nested lists is
    several times slower, most of all for NHWC images whose innermost lists hold one value."""
    depth, probe = 0, data
    while isinstance(probe, list) and probe:
        probe = probe[0]
        depth += 1
    if depth <= 1:
        return data
    items: Iterable[Any] = data
    for _ in range(depth - 1):
        items = itertools.chain.from_iterable(items)
    return list(items)


def _octets(flat: list[Any]) -> np.ndarray | None:
    """``flat`` as UINT8 when it holds only integers from 0 to 255, else None (the general
    path then says what is wrong)."""
    try:
        return np.frombuffer(bytes(flat), dtype=np.uint8)
    except (TypeError, ValueError):
        return None


def _decode_json_bytes(data: list[Any], name: str, count: int) -> np.ndarray:
    flat: list[bytes] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if not isinstance(item, str):
                raise ProtocolError(f"input '{name}': BYTES data must hold only strings")
            if len(flat) == count:
                # Stop at once: the walk must not cost more than the declared shape allows.
                raise ProtocolError(
                    f"input '{name}': shape holds {count} elements but data holds more"
                )
            flat.append(item.encode("utf-8"))
        else:
            stack.pop()
    if len(flat) != count:
        raise ProtocolError(
            f"input '{name}': shape holds {count} elements but data holds {len(flat)}"
        )
    out = np.empty(count, dtype=object)
    out[:] = flat
    return out


def _decode_binary_bytes(buf: memoryview, name: str, count: int) -> np.ndarray:
    items: list[bytes] = []
    pos, end = 0, len(buf)
    while pos < end:
        if end - pos < 4:
            raise ProtocolError(f"input '{name}': BYTES data ends inside a length prefix")
        (size,) = _LEN.unpack_from(buf, pos)
        pos += 4
        if size > end - pos:
            raise ProtocolError(f"input '{name}': BYTES element {len(items)} runs past the data")
        if len(items) == count:
            raise ProtocolError(f"input '{name}': shape holds {count} elements but data holds more")
        items.append(bytes(buf[pos : pos + size]))
        pos += size
    if len(items) != count:
        raise ProtocolError(
            f"input '{name}': shape holds {count} elements but data holds {len(items)}"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def _wide_ints(data: list[Any], target: np.dtype[Any], datatype: str, name: str) -> np.ndarray:
    flat: list[Any] = []
    stack: list[Any] = [data]
    while stack:
        for item in stack.pop():
            (stack.append if isinstance(item, list) else flat.append)(item)
    odd = [v for v in flat if not isinstance(v, int) or isinstance(v, bool)]
    if odd:
        if not all(isinstance(v, float) for v in odd):
            raise ProtocolError(f"input '{name}': data must hold only numbers for {datatype}")
        # JSON parsers read integers beyond 64 bits as floats.
        if all(isinstance(v, float) and v.is_integer() and abs(v) >= 2**63 for v in odd):
            raise ProtocolError(f"input '{name}': data holds values out of range for {datatype}")
        raise ProtocolError(f"input '{name}': {datatype} data must hold only integers")
    try:
        return np.asarray(data, dtype=target).reshape(-1)
    except OverflowError:
        raise ProtocolError(
            f"input '{name}': data holds values out of range for {datatype}"
        ) from None


def _check_int_range(arr: np.ndarray, target: np.dtype[Any], datatype: str, name: str) -> None:
    info = np.iinfo(target)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= info.min and hi <= info.max:
        return
    bad = int(np.flatnonzero((arr < info.min) | (arr > info.max))[0])
    raise ProtocolError(
        f"input '{name}': element {bad} ({int(arr[bad])}) is out of range for {datatype}"
    )


def _first_non_finite(arr: np.ndarray) -> int | None:
    finite = np.isfinite(arr)
    if finite.all():
        return None
    return int(np.argmin(finite))
