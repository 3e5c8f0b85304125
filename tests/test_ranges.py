"""nimbus.ranges: a file filled by ranges in parallel, hashed in order as they land."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from nimbus.ranges import WRITE_SIZE, fill_and_hash, pwrite_all

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
