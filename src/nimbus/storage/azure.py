"""Object store in an Azure Blob Storage container, through obstore.

Credentials and endpoint come from Azure's standard configuration, never from the storage
URL: ``AZURE_STORAGE_CONNECTION_STRING`` (as the Azure CLI and SDKs read it, Azurite's
included), or the account name and key variables (``AZURE_STORAGE_ACCOUNT`` /
``AZURE_STORAGE_ACCOUNT_NAME`` and ``AZURE_STORAGE_KEY`` / ``AZURE_STORAGE_ACCOUNT_KEY``),
or else obstore's default credential chain (service principal, workload identity, managed
identity, Azure CLI). Writes are create-only: ``If-None-Match: *`` on a single put; large
files go up as blocks of ``part_size`` (at most ``concurrency`` in flight), committed by one
block list after an absence check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta

from obstore.store import AzureStore

from nimbus.errors import InvalidInput
from nimbus.storage.azure_direct import AzureDirect, from_config
from nimbus.storage.cloud import (
    CONCURRENCY,
    PART_SIZE,
    ObstoreObjectStore,
    client_options,
    retry_config,
)

# The Azure CLI's names for the account and its key; obstore reads its own spellings.
_ALIASES = {"AZURE_STORAGE_ACCOUNT": "account_name", "AZURE_STORAGE_KEY": "account_key"}


def parse_connection_string(text: str) -> dict[str, str]:
    """obstore settings from an Azure storage connection string
    (``AccountName=...;AccountKey=...;BlobEndpoint=...`` or ``UseDevelopmentStorage=true``)."""
    fields: dict[str, str] = {}
    for part in text.strip().split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise InvalidInput(
                "AZURE_STORAGE_CONNECTION_STRING is not a connection string "
                f"(expected Name=value pairs separated by ';', got {name.strip()!r})"
            )
        fields[name.strip().lower()] = value.strip()
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        # Azurite on 127.0.0.1:10000 with its public development account and key.
        return {"use_emulator": "true", "account_name": "devstoreaccount1"}
    config: dict[str, str] = {}
    if "accountname" in fields:
        config["account_name"] = fields["accountname"]
    if "accountkey" in fields:
        config["account_key"] = fields["accountkey"]
    if "sharedaccesssignature" in fields:
        config["sas_key"] = fields["sharedaccesssignature"]
    if "blobendpoint" in fields:
        config["endpoint"] = fields["blobendpoint"].rstrip("/")
    elif "endpointsuffix" in fields and "accountname" in fields:
        protocol = fields.get("defaultendpointsprotocol", "https")
        config["endpoint"] = f"{protocol}://{fields['accountname']}.blob.{fields['endpointsuffix']}"
    if "account_name" not in config:
        raise InvalidInput("AZURE_STORAGE_CONNECTION_STRING names no AccountName")
    return config


def config_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings Azure's standard variables give; obstore reads the rest itself."""
    config = {key: environ[name] for name, key in _ALIASES.items() if environ.get(name)}
    connection = environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        config.update(parse_connection_string(connection))
    return config


class AzureObjectStore(ObstoreObjectStore):
    """Objects under ``prefix`` in ``container``; keys are ``/``-separated paths below it."""

    scheme = "az"
    container_word = "container"
    credential_hint = "AZURE_STORAGE_CONNECTION_STRING or the account key"
    missing_codes = ("ContainerNotFound",)
    credential_codes = ("AuthenticationFailed", "AuthorizationFailure", "403 Forbidden")

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        config: Mapping[str, str] | None = None,
        part_size: int = PART_SIZE,
        concurrency: int = CONCURRENCY,
        retry_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        settings = dict(config) if config is not None else config_from_env(os.environ)
        endpoint = settings.get("endpoint") or os.environ.get("AZURE_STORAGE_ENDPOINT") or ""
        emulator = settings.get("use_emulator", "").lower() == "true"
        store = AzureStore(
            container,
            prefix=prefix.strip("/") or None,
            config=settings or None,  # type: ignore[arg-type]
            client_options=client_options(  # type: ignore[arg-type]
                allow_http=emulator or endpoint.startswith("http://")
            ),
            retry_config=retry_config(retry_timeout),  # type: ignore[arg-type]
        )
        super().__init__(store, container, prefix, part_size=part_size, concurrency=concurrency)
        self._settings = settings
        self._direct: dict[str | None, AzureDirect | None] = {}

    def direct_transfers(self, public_endpoint: str | None = None) -> AzureDirect | None:
        """Block uploads by SAS and read SAS links on this container (azure-storage-blob:
        see :mod:`nimbus.storage.azure_direct`), for ``public_endpoint`` when given; None
        without an account key to sign with."""
        if public_endpoint not in self._direct:
            settings = dict(self._settings)
            # obstore reads its own spellings from the environment; the signer needs them too.
            for key, name in (
                ("endpoint", "AZURE_STORAGE_ENDPOINT"),
                ("account_name", "AZURE_STORAGE_ACCOUNT_NAME"),
                ("account_key", "AZURE_STORAGE_ACCOUNT_KEY"),
            ):
                if not settings.get(key) and os.environ.get(name):
                    settings[key] = os.environ[name]
            self._direct[public_endpoint] = from_config(
                self.container, self.prefix, settings, public_endpoint
            )
        return self._direct[public_endpoint]
