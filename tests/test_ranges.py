"""nimbus.ranges: a file filled by ranges in parallel, hashed in order as they land (from
the file, or from memory with the file written past the page cache)."""

from __future__ import annotations

import ctypes
import fcntl
import gc
import hashlib
import mmap
import os
import random
import threading
import time
import weakref
from pathlib import Path

import pytest

from nimbus.ranges import (
    ALIGN,
    WRITE_SIZE,
    _direct_write,
    fetch_write_hash,
    fill_and_hash,
    open_unbuffered,
    pwrite_all,
)

DATA = random.Random(7).randbytes(10_000)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)


@pytest.mark.parametrize(("range_size", "workers"), [(10_000, 4), (1_000, 1), (999, 4), (64, 8)])
def test_the_ranges_land_in_place_and_hash_as_the_whole(
    tmp_path: Path, range_size: int, workers: int
) -> None:
    seen: list[tuple[int, int]] = []
    rng = random.Random(1)

    def fill(fd: int, lo: int, hi: int) -> None:
        time.sleep(rng.random() / 1000)  # ranges land out of order
        for at in range(lo, hi, 100):  # in pieces
            os.pwrite(fd, DATA[at : min(hi, at + 100)], at)
        seen.append((lo, hi))

    fd = _open(tmp_path / "f")
    try:
        digest = fill_and_hash(fd, len(DATA), fill, range_size=range_size, workers=workers)
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(DATA).hexdigest()
    assert (tmp_path / "f").read_bytes() == DATA
    assert sorted(seen) == [
        (lo, min(len(DATA), lo + range_size)) for lo in range(0, len(DATA), range_size)
    ]


def test_one_range_is_filled_on_the_calling_thread(tmp_path: Path) -> None:
    threads: list[threading.Thread] = []

    def fill(fd: int, lo: int, hi: int) -> None:
        threads.append(threading.current_thread())
        os.pwrite(fd, DATA[lo:hi], lo)

    fd = _open(tmp_path / "f")
    try:
        assert fill_and_hash(fd, 500, fill, range_size=1000, workers=4) == (
            hashlib.sha256(DATA[:500]).hexdigest()
        )
        assert fill_and_hash(fd, 0, fill, range_size=1000, workers=4) == (
            hashlib.sha256(b"").hexdigest()
        )
    finally:
        os.close(fd)
    assert threads == [threading.main_thread()]


def test_a_failed_range_is_raised_and_the_rest_never_start(tmp_path: Path) -> None:
    started: list[int] = []

    def fill(fd: int, lo: int, hi: int) -> None:
        started.append(lo)
        if lo == 1000:
            raise ConnectionError("cut")
        time.sleep(0.01)
        os.pwrite(fd, DATA[lo:hi], lo)

    fd = _open(tmp_path / "f")
    try:
        with pytest.raises(ConnectionError, match="cut"):
            fill_and_hash(fd, len(DATA), fill, range_size=100, workers=2)
    finally:
        os.close(fd)
    assert 1000 in started and len(started) < 100  # the hasher gave up too: no hang


def test_pwrite_all_writes_everything_in_pieces_of_at_most_write_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(3).randbytes(2 * WRITE_SIZE + 17)
    sizes: list[int] = []
    real_pwrite = os.pwrite

    def short_pwrite(fd: int, buffer: bytes, offset: int) -> int:
        sizes.append(len(buffer))
        return real_pwrite(fd, bytes(buffer)[: max(1, len(buffer) - 5)], offset)  # short writes

    fd = _open(tmp_path / "f")
    try:
        os.pwrite(fd, b"head", 0)
        monkeypatch.setattr(os, "pwrite", short_pwrite)
        pwrite_all(fd, data, 4)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"head" + data
    assert max(sizes) <= WRITE_SIZE


# fetch_write_hash: ranges held in memory until hashed in order, the file written past the
# page cache.

BIG = random.Random(8).randbytes(5 * ALIGN * 8 + 123)  # 41 blocks and a partial one


def _resident_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the page cache (mincore(2) of a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        anchor = ctypes.c_char.from_buffer(mapped)
        vector = ctypes.create_string_buffer(pages)
        try:
            if libc.mincore(ctypes.addressof(anchor), size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del anchor
        return sum(byte & 1 for byte in vector.raw)


@pytest.mark.parametrize(("range_size", "workers", "slots"), [(8 * ALIGN, 4, 6), (ALIGN, 3, 3)])
@pytest.mark.parametrize("unbuffered", [True, False])
def test_fetched_ranges_land_in_place_and_hash_as_the_whole(
    tmp_path: Path, range_size: int, workers: int, slots: int, unbuffered: bool
) -> None:
    rng = random.Random(2)

    def fetch(lo: int, hi: int, into: memoryview) -> None:
        time.sleep(rng.random() / 500)  # ranges land out of order
        into[:] = BIG[lo:hi]

    path = tmp_path / "f"
    if unbuffered:
        fd, direct = open_unbuffered(path, 0o600)
        if not direct:
            pytest.skip(f"{tmp_path} has no direct I/O")
    else:
        fd = _open(path)
    try:
        digest = fetch_write_hash(
            fd,
            len(BIG),
            fetch,
            range_size=range_size,
            workers=workers,
            slots=slots,
            unbuffered=unbuffered,
        )
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(BIG).hexdigest()
    assert path.read_bytes() == BIG  # the last write's padding cut off


def test_an_unbuffered_file_stays_out_of_the_page_cache(tmp_path: Path) -> None:
    """What the read-back is for: its bytes never enter the page cache (on this VM a GiB
    of fresh page-cache pages cost up to 17 s of kernel time); an ordinary write of the same
    bytes leaves them there."""
    data = random.Random(3).randbytes(256 * ALIGN)

    def fetch(lo: int, hi: int, into: memoryview) -> None:
        into[:] = data[lo:hi]

    resident = {}
    for unbuffered in (True, False):
        path = tmp_path / f"f-{unbuffered}"
        fd, direct = open_unbuffered(path, 0o600) if unbuffered else (_open(path), False)
        if unbuffered and not direct:
            pytest.skip(f"{tmp_path} has no direct I/O")
        try:
            fetch_write_hash(
                fd, len(data), fetch, range_size=16 * ALIGN, workers=2, slots=3, unbuffered=direct
            )
        finally:
            os.close(fd)
        resident[unbuffered] = _resident_pages(path)
    assert resident[True] == 0
    assert resident[False] >= 200


def test_no_more_ranges_are_held_than_slots(tmp_path: Path) -> None:
    """A first range that is slow to come: the others fetch ahead only as far as the
    buffers allow, then wait for it to be hashed."""
    slots = 3
    first = threading.Event()
    started: list[int] = []

    def fetch(lo: int, hi: int, into: memoryview) -> None:
        started.append(lo // ALIGN)
        if lo == 0:
            assert first.wait(5)
        into[:] = BIG[lo:hi]

    fd = _open(tmp_path / "f")
    try:
        timer = threading.Timer(0.5, first.set)
        timer.start()
        done = fetch_write_hash(
            fd, len(BIG), fetch, range_size=ALIGN, workers=8, slots=slots, unbuffered=False
        )
        timer.join()
    finally:
        os.close(fd)
    assert done == hashlib.sha256(BIG).hexdigest()
    # While range 0 was held up, ranges 1 and 2 (its fellow slots) at most had started.
    assert started.index(0) < 8 and set(started[:slots]) == set(range(slots))
    assert len(started) == -(-len(BIG) // ALIGN)


def test_a_failed_fetch_is_raised_and_later_ranges_never_start(tmp_path: Path) -> None:
    started: list[int] = []

    def fetch(lo: int, hi: int, into: memoryview) -> None:
        started.append(lo)
        if lo == 2 * ALIGN:
            raise OSError("the service went away")
        into[:] = BIG[lo:hi]

    fd = _open(tmp_path / "f")
    try:
        with pytest.raises(OSError, match="went away"):
            fetch_write_hash(
                fd, len(BIG), fetch, range_size=ALIGN, workers=2, slots=2, unbuffered=False
            )
    finally:
        os.close(fd)
    assert len(started) <= 4  # those in flight when it failed, not the 40 after


def test_a_direct_write_the_device_refuses_goes_through_the_page_cache(tmp_path: Path) -> None:
    """EINVAL from an unbuffered write (here: an unaligned one, as a device with bigger
    blocks than ALIGN would answer): the file goes on buffered, nothing lost."""
    fd, direct = open_unbuffered(tmp_path / "f", 0o600)
    if not direct:
        pytest.skip(f"{tmp_path} has no direct I/O")
    try:
        with pytest.raises(OSError):
            os.pwrite(fd, b"x" * 100, 1)  # what the kernel says to an unaligned write
        _direct_write(fd, memoryview(BIG[: ALIGN + 7]), 3)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes()[3:] == BIG[: ALIGN + 7]


def test_a_failed_fetch_leaves_no_reference_cycle(tmp_path: Path) -> None:
    """The error raised holds the failed fetch's frames (its connection, its response):
    they must go when the error does, not at some later garbage collection, where a
    socket still open in them is reported in whatever test runs then."""

    class Held:
        """Something the failed fetch's frame holds, as a response."""

    held: list[weakref.ref[Held]] = []

    def fetch(lo: int, hi: int, into: memoryview) -> None:
        response = Held()
        held.append(weakref.ref(response))
        raise OSError("the service went away")

    fd = _open(tmp_path / "f")
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(OSError, match="went away"):
            fetch_write_hash(
                fd, len(BIG), fetch, range_size=ALIGN, workers=2, slots=2, unbuffered=False
            )
        assert held and all(ref() is None for ref in held)
    finally:
        gc.enable()
        os.close(fd)
