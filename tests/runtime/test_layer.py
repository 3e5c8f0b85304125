"""A job's environment joins ``sys.path`` after the platform's packages, ``.pth`` files
included (nimbus.runtime.layer)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.runtime.layer import VARIABLE, activate


@pytest.fixture
def restored() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def test_the_environment_is_added_after_the_platform(tmp_path: Path, restored: None) -> None:
    env = tmp_path / "env"
    (env / "layered_pkg_xyz").mkdir(parents=True)
    (env / "layered_pkg_xyz" / "__init__.py").write_text("WHERE = 'env'\n")
    (env / "extra").mkdir()
    (env / "extra" / "by_pth_xyz.py").write_text("WHERE = 'pth'\n")
    (env / "layered.pth").write_text("extra\n")
    (env / "numpy").mkdir()  # a shadow of a platform package: the platform's wins
    (env / "numpy" / "__init__.py").write_text("raise ImportError('shadowed')\n")
    before = list(sys.path)
    assert activate({}) is None and sys.path == before
    assert activate({VARIABLE: str(env)}) == str(env)
    assert sys.path[: len(before)] == before  # appended: the platform's come first
    assert importlib.import_module("layered_pkg_xyz").WHERE == "env"
    assert importlib.import_module("by_pth_xyz").WHERE == "pth"
    import numpy

    assert not numpy.__file__.startswith(str(env))
