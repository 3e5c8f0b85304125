"""Optional dependency groups: the plain install stays light, ``all`` holds every group,
and a storage URL whose backend's libraries are missing is refused naming its extra."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from nimbus.errors import MissingExtra
from nimbus.storage.factory import open_object_store

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
CLOUD_SDKS = ("obstore", "boto3", "google-cloud-storage", "azure-storage-blob")


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads(PYPROJECT.read_text())["project"]
    return project


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_the_plain_install_holds_no_cloud_sdk() -> None:
    base = {_name(r) for r in _project()["dependencies"]}  # type: ignore[attr-defined]
    assert not base & set(CLOUD_SDKS)


def test_all_holds_every_optional_group() -> None:
    extras: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    # dev and bench are the project's own tools (tests, the benchmarks' peers), not Nimbus's.
    groups = set(extras) - {"all", "dev", "bench"}
    assert {"s3", "azure", "gcs"} <= groups
    (self_ref,) = extras["all"]
    match = re.fullmatch(r"nimbus\[([a-z0-9_,-]+)\]", self_ref)
    assert match is not None, self_ref
    assert set(match.group(1).split(",")) == groups


@pytest.mark.parametrize(
    ("url", "extra", "library"),
    [
        ("s3://bucket/prefix", "s3", "obstore"),
        ("s3://bucket/prefix", "s3", "boto3"),
        ("az://container/prefix", "azure", "obstore"),
        ("az://container/prefix", "azure", "azure.storage.blob"),
        ("gs://bucket/prefix", "gcs", "google.cloud.storage"),
    ],
)
def test_a_cloud_url_without_its_extra_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, url: str, extra: str, library: str
) -> None:
    # As if the library were not installed: importing it raises ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, library, None)
    for backend in ("nimbus.storage.s3", "nimbus.storage.azure", "nimbus.storage.gcs"):
        monkeypatch.delitem(sys.modules, backend, raising=False)
    with pytest.raises(MissingExtra) as refused:
        open_object_store(url)
    assert refused.value.extra == extra
    assert str(refused.value) == (
        f"{extra} object storage needs the optional '{extra}' dependencies ({library} is not "
        f"installed): pip install 'nimbus[{extra}]' (or 'nimbus[all]')"
    )
    assert refused.value.status == 503
