"""What a ``nimbus`` command loads when it starts: every command pays for it (an upload or a
download too), so the root imports a command's module only when that command runs (or when
the root help lists it), and the modules import the SDK, the settings and the wire models
only when a command uses them. Each case runs the real entry point in a fresh interpreter
and reads ``sys.modules`` once the command has ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.cli.conftest import Registry
from tests.helpers_imports import SRC

NEVER = ("numpy", "torch", "sklearn", "sqlalchemy", "fastapi", "uvicorn")
# pydantic is not among them: typer itself converts parameters with it when a command runs.
SDK = ("httpx", "pydantic_settings", "nimbus.client", "nimbus.config", "nimbus.wire.base")


def loaded_after(argv: Sequence[str], env: dict[str, str]) -> tuple[int, set[str]]:
    """Run ``nimbus ARGV`` in a fresh interpreter: its exit code and the modules it loaded."""
    # main() ends the process itself (nimbus.system.exit_now), running exit handlers first.
    code = (
        "import atexit, json, sys\n"
        "from nimbus.cli.app import main\n"
        "atexit.register(lambda: print('\\n' + json.dumps(sorted(sys.modules))))\n"
        f"main({list(argv)!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "PYTHONPATH": str(SRC)},
        timeout=120,
    )
    return done.returncode, set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"NIMBUS_HOME": str(tmp_path / "home"), "NIMBUS_URL": "http://127.0.0.1:9"}


def test_the_root_help_loads_no_sdk(env: dict[str, str]) -> None:
    """``nimbus --help`` lists every command (so imports every command module) but loads
    neither the SDK, httpx, the wire models nor the settings."""
    status, modules = loaded_after(["--help"], env)
    assert status == 0
    assert {"nimbus.cli.datasets", "nimbus.cli.models", "nimbus.cli.jobs"} <= modules
    assert sorted(modules & {*NEVER, *SDK}) == []


def test_a_group_help_loads_only_its_module(env: dict[str, str]) -> None:
    status, modules = loaded_after(["datasets", "--help"], env)
    assert status == 0
    assert "nimbus.cli.datasets" in modules
    others = {m for m in modules if m.startswith("nimbus.cli.")} - {
        "nimbus.cli.app",
        "nimbus.cli.common",
        "nimbus.cli.datasets",
        "nimbus.cli.render",
        "nimbus.cli.render_fairness",
    }
    assert sorted(others) == []
    assert sorted(modules & {*NEVER, *SDK}) == []


def test_a_light_command_loads_its_module_and_the_sdk_only(
    env: dict[str, str], registry: Registry
) -> None:
    """``nimbus datasets list`` against a real server: the SDK, not the other commands'
    modules, not urllib3 (direct transfers only), never numpy or torch."""
    env.update(NIMBUS_URL=registry.server.url, NIMBUS_TOKEN=registry.server.admin_token)
    status, modules = loaded_after(["datasets", "list", "--json"], env)
    assert status == 0
    assert {"nimbus.cli.datasets", "nimbus.client", "httpx"} <= modules
    assert sorted(modules & {"nimbus.cli.models", "nimbus.cli.jobs", "nimbus.cli.follow"}) == []
    assert sorted(modules & {*NEVER, "urllib3"}) == []


def test_a_failed_command_loads_no_numpy(env: dict[str, str]) -> None:
    """The same with nothing listening: the one-line error path."""
    env["NIMBUS_TOKEN"] = "nbt_not-a-real-token"
    status, modules = loaded_after(["datasets", "download", "some-data", "out"], env)
    assert status != 0
    assert "nimbus.client" in modules
    assert sorted(modules & set(NEVER)) == []
