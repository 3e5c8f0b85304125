"""The registration check (:mod:`nimbus.modelformat.verify`) as a process of its own:
``python -m nimbus.modelformat.verify_child [--accuracy A]``, run by the control plane in a
limited child (:mod:`nimbus.services.isolated`) so that a model that runs long or takes
much memory costs that child, not the server.

Its inputs are open files, never paths (the child may not be able to open the blob store):
fd 3 ``spec.json``, fd 4 ``weights.safetensors``, fd 5 ``model.onnx`` and, with
``--accuracy``, fd 6 and fd 7 the test split's ``x`` and ``y`` (``.npy``). It prints one
JSON object on stdout: ``{"spec": {...}}`` when the model passed, ``{"error": "..."}``
(with ``"limit": "memory"`` when memory ran out) when it did not; it exits 0 either way.

With ``--import`` it checks a model trained elsewhere instead
(:func:`nimbus.modelformat.imported.import_spec`): fd 3 is the uploaded ONNX file, fd 4 the
import options (JSON, :class:`~nimbus.modelformat.imported.ImportOptions`); the spec it prints
is the one to store for that model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from nimbus.errors import InvalidInput
from nimbus.modelformat.import_options import ImportOptions
from nimbus.modelformat.imported import import_spec
from nimbus.modelformat.verify import check_model
from nimbus.system import exit_now

SPEC_FD, WEIGHTS_FD, ONNX_FD, TEST_X_FD, TEST_Y_FD = 3, 4, 5, 6, 7
IMPORT_ONNX_FD, IMPORT_OPTIONS_FD = 3, 4


def _verify(accuracy: float | None) -> dict[str, Any]:
    with os.fdopen(SPEC_FD, "rb") as f:
        spec_json = f.read()
    with os.fdopen(ONNX_FD, "rb") as f:
        onnx = f.read()
    split = None
    if accuracy is not None:
        with os.fdopen(TEST_X_FD, "rb") as fx, os.fdopen(TEST_Y_FD, "rb") as fy:
            split = (np.load(fx, allow_pickle=False), np.load(fy, allow_pickle=False))
    with os.fdopen(WEIGHTS_FD, "rb") as weights:
        spec = check_model(spec_json, weights, onnx, test_split=split, recorded_accuracy=accuracy)
    return {"spec": spec}


def _import() -> dict[str, Any]:
    with os.fdopen(IMPORT_ONNX_FD, "rb") as f:
        onnx = f.read()
    with os.fdopen(IMPORT_OPTIONS_FD, "rb") as f:
        options = ImportOptions.from_dict(json.loads(f.read()))
    return {"spec": import_spec(onnx, options)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nimbus.modelformat.verify_child")
    parser.add_argument("--accuracy", type=float, default=None)
    parser.add_argument("--import", dest="imported", action="store_true")
    args = parser.parse_args(argv)
    try:
        reply = _import() if args.imported else _verify(args.accuracy)
    except InvalidInput as exc:
        reply = {"error": exc.message}
    except MemoryError:
        reply = {"error": "the model does not fit the memory limit", "limit": "memory"}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    exit_now(0)  # the control plane waits on this process: the reply is out, end it now
