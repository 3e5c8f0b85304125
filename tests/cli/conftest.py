"""A ``nimbus`` fixture: the CLI run in-process by typer's CliRunner, with its own NIMBUS_HOME."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from nimbus.cli.app import app
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY, image_model_dir, insert_job


@dataclass
class Nimbus:
    """Runs ``nimbus ARGS...``; checks the exit code and that no traceback leaked."""

    env: dict[str, str | None] = field(default_factory=dict)

    def __call__(
        self,
        *args: str,
        code: int = 0,
        env: Mapping[str, str | None] | None = None,
        input: str | None = None,
        job_output: bool = False,
    ) -> Result:
        """``job_output``: stdout carries a job's logs, where a traceback is the job's own."""
        result = CliRunner().invoke(
            app, list(args), env={**self.env, **(env or {})}, input=input, prog_name="nimbus"
        )
        detail = f"nimbus {' '.join(args)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(
                f"unexpected exception {result.exception!r}\n{detail}"
            ) from result.exception
        assert result.exit_code == code, detail
        assert "Traceback" not in (result.stderr if job_output else result.output), detail
        if code != 0:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), detail
        return result

    def json(self, *args: str, env: Mapping[str, str | None] | None = None) -> Any:
        """Run with ``--json`` and parse stdout."""
        return json.loads(self(*args, "--json", env=env).stdout)


@pytest.fixture
def nimbus(tmp_path: Path) -> Nimbus:
    """The CLI with a private NIMBUS_HOME and no server (nothing listens on port 9)."""
    return Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli-home"),
            "NIMBUS_URL": "http://127.0.0.1:9",
            "NIMBUS_TOKEN": None,
            "COLUMNS": "200",
        }
    )


@dataclass
class Registry:
    server: ServerProcess
    model_dir: Path

    def job(self) -> str:
        """A new succeeded job of the admin's tenant holding :attr:`model_dir`'s model."""
        return insert_job(self.server.home, "default", self.model_dir)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("cli-registry")
    server = ServerProcess(root / "home", env=API_ONLY).start()
    try:
        yield Registry(server, image_model_dir(root / "model", seed=1))
    finally:
        server.stop()
