"""``nimbus models`` end to end against a real server (scheduler off): jobs are written
straight into its stores as a finished job leaves them, then registered through the CLI.

The session fixture ``registry`` (one server, one exported model directory, in conftest.py)
is shared with ``test_deploy.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimbus.modelformat.files import MODEL_FILES
from tests.cli.conftest import Nimbus, Registry


@pytest.fixture
def cli(nimbus: Nimbus, registry: Registry) -> Nimbus:
    nimbus.env.update(NIMBUS_URL=registry.server.url, NIMBUS_TOKEN=registry.server.admin_token)
    return nimbus


def test_register_list_show_alias_download_delete(
    cli: Nimbus, registry: Registry, tmp_path: Path
) -> None:
    first, second = registry.job(), registry.job()
    v1 = cli.json("models", "register", "cli-model", "--from-job", first)
    assert (v1["model"], v1["version"], v1["job"]) == ("cli-model", 1, first)
    assert set(v1["files"]) == set(MODEL_FILES) and v1["aliases"] == []
    # The same job again is the same version; a new job makes version 2.
    assert cli.json("models", "register", "cli-model", "--from-job", first)["version"] == 1
    out = cli("models", "register", "cli-model", "--from-job", second).stdout
    assert "Registered cli-model:2" in out and second in out

    listed = {m["name"]: m for m in cli.json("models", "list")["models"]}
    assert listed["cli-model"]["latest_version"] == 2 and listed["cli-model"]["versions"] == 2
    assert "cli-model" in cli("models", "list").stdout

    moved = cli.json("models", "alias", "cli-model", "production", "1")
    assert (moved["model"], moved["alias"], moved["version"]) == ("cli-model", "production", 1)
    assert (
        "cli-model@production -> version 1"
        in cli("models", "alias", "cli-model", "production", "1").stdout
    )
    assert cli.json("models", "show", "cli-model@production")["version"] == 1
    assert cli.json("models", "show", "cli-model:latest")["version"] == 2
    model = cli.json("models", "show", "cli-model")
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert model["aliases"] == {"production": 1}
    shown = cli("models", "show", "cli-model:1").stdout
    for text in ("cli-model:1", "production", first, "image-classification", "cat, dog, eel"):
        assert text in shown, text
    assert "production→1" in cli("models", "show", "cli-model").stdout

    got = cli.json("models", "download", "cli-model@production", str(tmp_path / "dl"))
    assert (got["model"], got["version"]) == ("cli-model", 1)
    for name in MODEL_FILES:
        assert (tmp_path / "dl" / name).read_bytes() == (registry.model_dir / name).read_bytes()
    again = cli("models", "download", "cli-model:1", str(tmp_path / "d2")).stdout
    assert "Downloaded cli-model:1" in again and "model.onnx" in again

    assert cli.json("models", "delete", "cli-model:2")["version"] == 2
    cli("models", "show", "cli-model:2", code=4)
    assert "Deleted cli-model:1" in cli("models", "delete", "cli-model:1").stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["models", "register", "cli-model", "--from-job", "job_nope"], 4, "job"),
        (["models", "register", "cli-model"], 2, "Missing option '--from-job'"),
        (["models", "show", "Bad"], 2, "invalid model name"),
        (["models", "show", "cli-model:0"], 2, "invalid model reference"),
        (["models", "show", "nosuch-model"], 4, "nosuch-model"),
        (["models", "alias", "cli-model", "latest", "1"], 2, "invalid alias"),
        (["models", "alias", "cli-model", "prod", "one"], 2, "'V'"),
        (["models", "delete", "cli-model"], 2, "name the version"),
    ],
)
def test_registry_failures_are_one_line(
    cli: Nimbus, args: list[str], code: int, message: str
) -> None:
    result = cli(*args, code=code)
    assert message in result.stderr and result.stdout == ""
