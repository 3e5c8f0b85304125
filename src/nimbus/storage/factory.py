"""The one place where a storage URL picks a backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from nimbus.errors import InvalidInput
from nimbus.storage.base import ObjectStore
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore
from nimbus.storage.s3 import S3ObjectStore


def _local(url: str) -> ObjectStore:
    return LocalObjectStore(Path(unquote(urlparse(url).path)))


def _memory(url: str) -> ObjectStore:
    return MemoryObjectStore()


def _s3(url: str) -> ObjectStore:
    parsed = urlparse(url)
    if not parsed.hostname:
        raise InvalidInput(f"storage URL {url!r} names no bucket (s3://BUCKET/PREFIX)")
    if parsed.username or parsed.password or parsed.query:
        raise InvalidInput(
            "an s3:// storage URL carries no credentials or options: set AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL instead"
        )
    store = S3ObjectStore(parsed.hostname, unquote(parsed.path))
    store.probe()
    return store


_BACKENDS: dict[str, Callable[[str], ObjectStore]] = {
    "file": _local,
    "memory": _memory,
    "s3": _s3,
}


def open_object_store(url: str) -> ObjectStore:
    """Open the object store named by ``url`` (``file:///dir``, ``memory://`` or
    ``s3://BUCKET/PREFIX``); a bucket is probed now, so a misconfiguration fails here."""
    scheme = urlparse(url).scheme or "file"
    try:
        factory = _BACKENDS[scheme]
    except KeyError:
        raise InvalidInput(
            f"unsupported storage URL scheme {scheme!r} (supported: {sorted(_BACKENDS)})"
        ) from None
    return factory(url)
