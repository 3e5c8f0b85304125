"""Giving memory back to the system after large requests.

glibc keeps freed heap memory for reuse, and after a large block allocated with mmap is freed
it raises its mmap threshold (up to 32 MiB), so the next large tensors come from the heap and
stay there: a replica that once decoded a big request kept its peak size. :func:`tune_allocator`
pins the threshold, so large tensors are mapped and unmapped on their own, and
:func:`release_memory` trims what the heap holds free. Both do nothing where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD = 4 * 1024 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None  # not glibc (musl, macOS)
    return libc


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``mmap_threshold`` bytes and more from their own mappings, for good."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))


def release_memory() -> bool:
    """Return the heap's free pages to the system (a few milliseconds; call it off the loop)."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
