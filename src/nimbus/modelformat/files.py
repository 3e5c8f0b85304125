"""The files of a model directory (docs/model-format.md): the one place their names are
written down. Every module that reads or writes a model directory takes them from here."""

from __future__ import annotations

SPEC_FILE = "spec.json"  # architecture, input signature, classes, preprocessing
WEIGHTS_FILE = "weights.safetensors"  # the state_dict (built-ins; custom models too)
ONNX_FILE = "model.onnx"  # softmax included, dynamic batch axis
MODEL_FILES = (SPEC_FILE, WEIGHTS_FILE, ONNX_FILE)
# A script's torch module as a graph for gradient explanations (nimbus.modelformat.program):
# both or neither; a model without them is explained by occlusion/Shapley.
PROGRAM_FILE = "program.json"
PROGRAM_WEIGHTS_FILE = "program.safetensors"
PROGRAM_FILES = (PROGRAM_FILE, PROGRAM_WEIGHTS_FILE)
