"""The one place where a storage URL picks a backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from nimbus.errors import InvalidInput
from nimbus.storage.base import ObjectStore
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore


def _local(url: str) -> ObjectStore:
    return LocalObjectStore(Path(unquote(urlparse(url).path)))


def _memory(url: str) -> ObjectStore:
    return MemoryObjectStore()


_BACKENDS: dict[str, Callable[[str], ObjectStore]] = {"file": _local, "memory": _memory}


def open_object_store(url: str) -> ObjectStore:
    """Open the object store named by ``url`` (``file:///dir`` or ``memory://``)."""
    scheme = urlparse(url).scheme or "file"
    try:
        factory = _BACKENDS[scheme]
    except KeyError:
        raise InvalidInput(
            f"unsupported storage URL scheme {scheme!r} (supported: {sorted(_BACKENDS)})"
        ) from None
    return factory(url)
