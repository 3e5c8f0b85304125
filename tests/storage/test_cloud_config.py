"""How a storage URL and each cloud's standard variables configure a backend (no server)."""

from __future__ import annotations

import pytest

from nimbus.errors import InvalidInput, StorageUnavailable
from nimbus.storage import open_object_store
from nimbus.storage.azure import config_from_env, parse_connection_string

AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


def test_an_azure_connection_string_gives_account_key_and_endpoint() -> None:
    assert parse_connection_string(AZURITE) == {
        "account_name": "devstoreaccount1",
        "account_key": "a2V5",
        "endpoint": "http://127.0.0.1:10000/devstoreaccount1",
    }
    cloud = (
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=k;"
        "EndpointSuffix=core.windows.net"
    )
    assert parse_connection_string(cloud)["endpoint"] == "https://acme.blob.core.windows.net"
    sas = parse_connection_string("AccountName=acme;SharedAccessSignature=sv=2024&sig=x%3D")
    assert sas == {"account_name": "acme", "sas_key": "sv=2024&sig=x%3D"}
    assert parse_connection_string("UseDevelopmentStorage=true") == {
        "use_emulator": "true",
        "account_name": "devstoreaccount1",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [("AccountKey=k;BlobEndpoint=http://x", "names no AccountName"), ("nonsense", "'nonsense'")],
)
def test_a_broken_connection_string_is_named(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        parse_connection_string(text)


def test_the_azure_cli_variables_and_the_connection_string() -> None:
    env = {"AZURE_STORAGE_ACCOUNT": "acme", "AZURE_STORAGE_KEY": "k"}
    assert config_from_env(env) == {"account_name": "acme", "account_key": "k"}
    both = {**env, "AZURE_STORAGE_CONNECTION_STRING": AZURITE}
    assert config_from_env(both)["account_name"] == "devstoreaccount1"
    assert config_from_env({}) == {}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("az:///prefix", "names no container (az://CONTAINER/PREFIX)"),
        ("gs:///prefix", "names no bucket (gs://BUCKET/PREFIX)"),
        ("az://key:secret@container/p", "set AZURE_STORAGE_CONNECTION_STRING"),
        ("gs://bucket/p?token=x", "application default credentials"),
        ("s3://user@bucket/p", "set AWS_ACCESS_KEY_ID"),
    ],
)
def test_a_cloud_url_names_a_container_and_carries_no_secret(url: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem.replace("(", r"\(").replace(")", r"\)")):
        open_object_store(url)


def test_gcs_without_any_credentials_fails_with_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/credentials.json")
    with pytest.raises(StorageUnavailable, match="no usable Google credentials"):
        open_object_store("gs://bucket/p")
