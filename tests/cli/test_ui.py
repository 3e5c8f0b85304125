"""``nimbus ui`` and ``nimbus demo --keep``: the ways into the console from a terminal."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from nimbus.cli import demo
from nimbus.cli.demo import run_steps, start_server
from nimbus.cli.demo_run import DemoRun, Step
from tests.cli.conftest import Nimbus
from tests.helpers import ServerProcess


def test_ui_prints_a_one_time_link_that_signs_in(
    nimbus: Nimbus, shared_server: ServerProcess
) -> None:
    env = {"NIMBUS_URL": shared_server.url, "NIMBUS_TOKEN": shared_server.admin_token}
    result = nimbus.json("ui", "--no-browser", env=env)
    assert result["opened"] is False
    link = result["url"]
    assert link.startswith(f"{shared_server.url}/login/link?code=ncl_")
    assert shared_server.admin_token not in link
    with httpx.Client(follow_redirects=True) as browser:
        signed = browser.get(link)  # follows to the overview, signed in
        assert signed.status_code == 200 and "Overview" in signed.text
        assert str(browser.cookies.get("nimbus_session")).startswith("ncs_")
    with httpx.Client() as second:
        assert second.get(link).status_code == 401  # once only


def test_ui_without_a_usable_token_fails_in_one_line(
    nimbus: Nimbus, shared_server: ServerProcess
) -> None:
    env = {"NIMBUS_URL": shared_server.url, "NIMBUS_TOKEN": "nbt_" + "x" * 43}
    result = nimbus("ui", "--no-browser", code=3, env=env)
    assert "invalid token" in result.stderr


def test_demo_keep_leaves_the_server_up_with_a_console_link(tmp_path: Path) -> None:
    run = DemoRun(tmp_path, Console(quiet=True), quiet=True)
    try:
        run_steps(run, [Step("Start", start_server)], keep=True)
        assert run.server is not None and run.server.proc is not None
        assert run.server.proc.poll() is None  # still running after the journey
        kept = run.results["kept"]
        with httpx.Client(follow_redirects=True) as browser:
            assert browser.get(kept["console_link"]).status_code == 200
    finally:
        if run.server is not None:
            run.server.stop()


def test_a_failed_demo_stops_its_server_even_with_keep(tmp_path: Path) -> None:
    def fail(run: DemoRun) -> None:
        raise RuntimeError("a step failed")

    run = DemoRun(tmp_path, Console(quiet=True), quiet=True)
    with pytest.raises(RuntimeError):
        run_steps(run, [Step("Start", start_server), Step("Fail", fail)], keep=True)
    assert run.server is not None and run.server.proc is None  # stopped


def test_demo_keep_json_names_the_kept_server(
    nimbus: Nimbus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The journey shortened to its first step: the flags' wiring and the --json answer.
    monkeypatch.setattr("nimbus.cli.demo.STEPS", [Step("Start", start_server)])
    result = nimbus.json("demo", "--keep")
    kept = result["kept"]
    try:
        assert result["ok"] is True and result["server"]["url"] == kept["url"]
        with httpx.Client(follow_redirects=True) as browser:
            assert "Overview" in browser.get(kept["console_link"]).text
    finally:
        os.killpg(kept["pid"], signal.SIGTERM)
        demo.KEPT.pop().wait(20)
        shutil.rmtree(Path(kept["home"]).parent, ignore_errors=True)
