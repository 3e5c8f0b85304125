"""The job process's C allocator: keep freed tensor memory for the next training step.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a block of a few
MB (a CNN's activations and gradients for a batch) with a fresh ``mmap`` and gives it back
with ``munmap`` when the tensor is freed, or trims the heap once its free top passes a
threshold of the same order: every step then faults its activations in afresh, thousands
of page faults a step (each zeroing a page and charging it to the attempt's memory
cgroup). Measured on the built-in ``cnn`` (batch 64, 28x28, 2 threads): ~4,000 faults a
step by default, ~0 with the settings below; on a busy 2-core machine that was ~26 ms of
CPU a step against ~14 ms, on a quiet one within the noise of ``bench/train.py``.

:func:`keep_freed_memory` raises the mmap threshold to glibc's maximum (32 MB: larger blocks
are still mapped and unmapped) and the trim threshold to :data:`TRIM_BYTES`, so a process
keeps up to that much freed heap for reuse. Called once at the start of a job; a no-op on
a C library without ``mallopt`` (musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 * 2**20  # glibc's largest accepted mmap threshold on 64-bit systems
TRIM_BYTES = 128 * 2**20


def keep_freed_memory() -> bool:
    """Apply the thresholds; whether the C library took them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)
    )
