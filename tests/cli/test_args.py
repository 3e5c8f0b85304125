"""The command line's shape and its failures, without a server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from nimbus.cli.app import app
from nimbus.cli.train import read_requirements
from tests.cli.conftest import Nimbus


def leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    children = getattr(command, "commands", None)
    if children is None:
        yield path, command
        return
    for name, child in children.items():
        yield from leaves(child, (*path, name))


def test_the_nouns_and_verbs_of_the_contract() -> None:
    paths = {" ".join(path) for path, _ in leaves(typer.main.get_command(app))}
    assert paths == {
        "server",
        "login",
        "demo",
        "ui",
        "tokens create",
        "tokens list",
        "tokens revoke",
        "quotas show",
        "quotas set",
        "storage sweep",
        "datasets upload",
        "datasets list",
        "datasets show",
        "datasets datasheet",
        "datasets download",
        "datasets delete",
        "serve",
        "train",
        "tune",
        "studies list",
        "studies show",
        "studies best",
        "studies cancel",
        "automl",
        "jobs list",
        "jobs show",
        "jobs logs",
        "jobs metrics",
        "jobs cancel",
        "jobs compare",
        "jobs artifact",
        "runs list",
        "runs show",
        "runs compare",
        "models register",
        "models import",
        "models list",
        "models show",
        "models card",
        "models alias",
        "models download",
        "models delete",
        "deploy",
        "deployments list",
        "deployments show",
        "deployments update",
        "deployments rollback",
        "deployments delete",
        "predict",
        "explain",
        "admin rotate-key",
        "cluster status",
    }


def test_every_command_accepts_json() -> None:
    for path, command in leaves(typer.main.get_command(app)):
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert "--json" in options, path


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["datasets", "upload", "digits"], 2, "Missing argument 'PATH'"),
        (["datasets", "show"], 2, "Missing argument 'NAME[:V]'"),
        (["datasets", "frobnicate"], 2, "No such command 'frobnicate'"),
        (["datasets", "upload", "digits", "x.zip", "--task", "poetry"], 2, "--task"),
        (["tokens", "create", "--name", "ci", "--role", "root"], 2, "--role"),
        (["datasets", "show", "Digits"], 2, "invalid dataset name 'Digits'"),
        (["datasets", "show", "digits:0"], 2, "invalid dataset reference"),
        (["datasets", "list"], 3, "no API token"),
        (["tokens", "list"], 3, "nimbus login"),
        (["train", "--model", "cnn"], 2, "--dataset is required: cnn, text, mlp, automl, a"),
        (["train", "--model", "train.py"], 2, "only a notebook (.ipynb) may run without one"),
        (["train", "--dataset", "digits"], 2, "Missing option '--model'"),
        (["train", "--dataset", "digits", "--model", "cnn", "--param", "epochs"], 2, "KEY=VALUE"),
        (["train", "--dataset", "digits", "--model", "cnn", "--deadline", "soon"], 2, "duration"),
        (["train", "--dataset", "digits", "--model", "cnn", "--memory", "x"], 2, "memory size"),
        (["train", "--dataset", "digits", "--model", "cnn"], 3, "no API token"),
        (
            ["train", "--dataset", "d", "--model", "cnn", "--requirements", "/nonexistent.txt"],
            2,
            "cannot read --requirements /nonexistent.txt",
        ),
        (["jobs", "show"], 2, "Missing argument 'ID'"),
        (["jobs", "compare", "job_1"], 2, "at least two job ids"),
        (["jobs", "list", "--state", "sleeping"], 2, "--state"),
        (["jobs", "logs", "job_1"], 3, "no API token"),
        (["models", "show", "digits@latest"], 2, "invalid alias"),
        (["models", "list"], 3, "no API token"),
        (["deploy", "digits"], 2, "Missing argument 'MODEL[:V|@ALIAS]'"),
        (["automl", "--dataset", "cancer"], 2, "Missing option '--budget'"),
        (["automl", "--dataset", "cancer", "--budget", "soon"], 2, "invalid budget"),
        (["deploy", "digits", "digits-cnn:1", "--replicas", "0"], 2, "--replicas"),
        (["deploy", "digits", "digits-cnn:x"], 2, "invalid model reference"),
        (["deployments", "update", "digits"], 2, "Missing argument"),
        (["predict", "digits"], 2, "either FILE or --text"),
        (["predict", "digits", "--text", "hi"], 3, "no API token"),
    ],
)
def test_bad_invocations_fail_with_one_line(
    nimbus: Nimbus, args: list[str], code: int, message: str
) -> None:
    result = nimbus(*args, code=code)
    assert message in result.stderr
    assert result.stdout == ""


def test_an_unreachable_server_is_named(nimbus: Nimbus) -> None:
    result = nimbus("datasets", "list", "--json", code=6, env={"NIMBUS_TOKEN": "nbt_x"})
    assert "cannot reach Nimbus at http://127.0.0.1:9" in result.stderr
    assert "nimbus server" in result.stderr


def test_upload_of_a_missing_file(nimbus: Nimbus) -> None:
    result = nimbus("datasets", "upload", "digits", "nope.zip", code=2, env={"NIMBUS_TOKEN": "t"})
    assert "no such file or directory: nope.zip" in result.stderr


def test_requirements_come_from_the_file_then_each_pip(tmp_path: Path) -> None:
    listed = tmp_path / "requirements.txt"
    listed.write_text("# for the paper\ntomli==2.0.1\n\nsix>=1.16\n")
    assert read_requirements(listed, ["rich==13.7.1"]) == [
        "# for the paper",
        "tomli==2.0.1",
        "",
        "six>=1.16",
        "rich==13.7.1",
    ]
    assert read_requirements(None, []) == []
