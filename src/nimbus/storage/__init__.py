"""Blob storage: an opaque-bytes object store interface, backends, and content addressing."""

from nimbus.storage.base import ObjectStore
from nimbus.storage.blobs import BlobRef, BlobStore, BlobWriter
from nimbus.storage.factory import open_object_store

__all__ = ["BlobRef", "BlobStore", "BlobWriter", "ObjectStore", "open_object_store"]
