"""Keras's backend for scripts that import keras first: torch unless the user chose another,
in real interpreter processes (Keras chooses once per process, at its first import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from nimbus.runtime.keras_backend import _TorchByDefault, chosen_backend, default_backend

FIRST_LINE_KERAS = "import keras\n\nprint('backend', keras.backend.backend())\n"


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KERAS_", "NIMBUS_"))}
    clean.update(HOME=str(tmp_path), **env)  # no keras.json of the machine's user
    return subprocess.run(
        [sys.executable, *args], env=clean, capture_output=True, text=True, timeout=120
    )


def test_the_local_runner_gives_a_keras_first_script_torch(tmp_path: Path) -> None:
    script = tmp_path / "tutorial.py"
    script.write_text(FIRST_LINE_KERAS)
    done = run(["-m", "nimbus.runtime", str(script)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "backend torch" in done.stdout


def test_a_script_that_imports_nimbus_first_gets_torch_too(tmp_path: Path) -> None:
    script = tmp_path / "local.py"
    script.write_text("from nimbus import runtime as nr\n" + FIRST_LINE_KERAS)
    done = run([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "backend torch" in done.stdout


def test_a_script_wanting_tensorflow_is_told_what_to_set(tmp_path: Path) -> None:
    script = tmp_path / "tf.py"
    script.write_text("import tensorflow as tf\n\nmodel = tf.keras.Sequential()\n")
    done = run(["-m", "nimbus.runtime", str(script)], tmp_path)
    assert done.returncode == 1
    assert "No module named 'tensorflow'" in done.stderr
    assert "set KERAS_BACKEND=torch before keras is imported" in done.stderr
    assert "--requirements holding tensorflow-cpu and tf2onnx" in done.stderr


def test_what_counts_as_a_choice(tmp_path: Path) -> None:
    home = tmp_path / "keras-home"
    assert chosen_backend({"KERAS_HOME": str(home)}) is None
    assert chosen_backend({"KERAS_HOME": str(home), "KERAS_BACKEND": "jax"}) == "jax"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    assert chosen_backend({"KERAS_HOME": str(home)}) is None  # Keras writes that by itself
    (home / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert chosen_backend({"KERAS_HOME": str(home)}) == "jax"
    (home / "keras.json").write_text("{not json")
    assert chosen_backend({"KERAS_HOME": str(home)}) is None


def test_a_backend_set_by_the_script_before_its_import_is_kept(tmp_path: Path) -> None:
    script = tmp_path / "chooses.py"
    script.write_text("import os\n\nos.environ.setdefault('KERAS_BACKEND', 'jax')\nimport keras\n")
    done = run(["-m", "nimbus.runtime", str(script)], tmp_path)
    assert done.returncode == 1  # jax is not installed: Keras tried the script's choice
    assert "No module named 'jax'" in done.stderr, done.stderr


def test_keras_imported_by_tensorflow_gets_tensorflow_else_torch() -> None:
    """``import tensorflow`` imports Keras 3 (``tf.keras``) from its ``__init__``, with
    ``tensorflow`` already in ``sys.modules``: a TensorFlow program's model must then be a
    TensorFlow one (tf2onnx exports it), every other Keras a torch one."""
    assert default_backend({"tensorflow", "numpy"}) == "tensorflow"
    assert default_backend({"torch", "numpy", "tensorflow_datasets"}) == "torch"
    assert default_backend(set()) == "torch"


def test_the_hook_sets_the_backend_when_keras_is_first_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no keras.json
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # find_spec uninstalls
    for imported, backend in (
        ({}, "torch"),
        ({"tensorflow": ModuleType("tensorflow")}, "tensorflow"),
    ):
        monkeypatch.delenv("KERAS_BACKEND", raising=False)
        with monkeypatch.context() as during:
            for name, module in imported.items():
                during.setitem(sys.modules, name, module)
            assert _TorchByDefault().find_spec("keras") is None
        assert os.environ["KERAS_BACKEND"] == backend
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # a choice is kept, TensorFlow or not
    with monkeypatch.context() as during:
        during.setitem(sys.modules, "tensorflow", ModuleType("tensorflow"))
        _TorchByDefault().find_spec("keras")
    assert os.environ["KERAS_BACKEND"] == "jax"
