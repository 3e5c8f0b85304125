"""``nimbus login`` and ``nimbus tokens`` against a real server."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.cli.conftest import Nimbus
from tests.helpers import ServerProcess


def test_login_saves_a_private_config_used_by_later_commands(
    nimbus: Nimbus, shared_server: ServerProcess, tmp_path: Path
) -> None:
    url, token = shared_server.url, shared_server.admin_token
    nimbus("login", "--url", url, "--token", "nbt_wrong", code=3)
    home = tmp_path / "cli-home"
    assert not (home / "config").exists()

    out = nimbus.json("login", "--url", url, "--token", token)
    assert out["url"] == url
    assert out["role"] == "admin" and out["tenant"] == "default"
    config = home / "config"
    assert out["config"] == str(config)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": url, "token": token}

    # Without --token the token is asked for, unechoed (or read from a pipe).
    prompted = nimbus("login", "--url", url, input=f"{token}\n")
    assert "Logged in to" in prompted.stdout and token not in prompted.output

    # No NIMBUS_URL, no NIMBUS_TOKEN: the saved login is enough.
    listed = nimbus.json("tokens", "list", env={"NIMBUS_URL": None})
    assert any(t["role"] == "admin" for t in listed["tokens"])


def test_tokens_create_list_revoke(nimbus: Nimbus, shared_server: ServerProcess) -> None:
    admin = {"NIMBUS_URL": shared_server.url, "NIMBUS_TOKEN": shared_server.admin_token}
    created = nimbus.json("tokens", "create", "--name", "ci", "--role", "viewer", env=admin)
    assert created["token"].startswith("nbt_") and created["role"] == "viewer"
    assert set(created) >= {"id", "name", "role", "tenant", "created_at", "token"}

    human = nimbus("tokens", "create", "--name", "people", env=admin)
    secret = human.stdout.strip()  # the secret alone on stdout, notes on stderr
    assert secret.startswith("nbt_") and "not shown again" in human.stderr

    listed = nimbus.json("tokens", "list", env=admin)["tokens"]
    ours = next(t for t in listed if t["id"] == created["id"])
    assert ours["revoked_at"] is None and "token" not in ours
    table = nimbus("tokens", "list", env=admin).stdout
    assert created["id"] in table and "viewer" in table

    viewer = {"NIMBUS_URL": shared_server.url, "NIMBUS_TOKEN": created["token"]}
    assert "datasets" in nimbus.json("datasets", "list", env=viewer)
    denied = nimbus("tokens", "create", "--name", "x", code=3, env=viewer)
    assert denied.stderr.startswith("error: ")

    revoked = nimbus.json("tokens", "revoke", created["id"], env=admin)
    assert revoked["id"] == created["id"] and revoked["revoked_at"]
    nimbus("datasets", "list", code=3, env=viewer)
    nimbus("tokens", "revoke", "tok_doesnotexist", code=4, env=admin)
