"""A file's SHA-256 begun in the background (nimbus.digests): what the CLI declares for a
direct upload."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nimbus import digests
from nimbus.digests import FileDigest, file_sha256


def test_a_background_digest_is_the_files_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digests, "READ_SIZE", 4096)
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 * 4096 + 17))  # several reads, the last one short
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert FileDigest(path).result() == expected == file_sha256(path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert FileDigest(empty).result() == hashlib.sha256(b"").hexdigest()


def test_it_describes_only_the_same_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)
    digest = FileDigest(path)
    digest.result()
    assert digest.describes(path)
    assert digest.describes(tmp_path / "." / "f.bin")  # the same file, spelled otherwise
    other = tmp_path / "g.bin"
    other.write_bytes(b"a" * 1000)
    assert not digest.describes(other)
    assert not digest.describes(tmp_path / "missing")
    path.write_bytes(b"a" * 1001)  # grown
    assert not digest.describes(path)
    path.write_bytes(b"b" * 1000)  # same size, rewritten later
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, digest.mtime_ns + 1))
    assert not digest.describes(path)


def test_a_cancelled_or_failed_digest_has_no_result(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FileDigest(tmp_path / "missing")  # at once, in the caller
    folder = FileDigest(tmp_path)  # stat works, reading does not
    with pytest.raises(IsADirectoryError):
        folder.result()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    digest = FileDigest(fifo)  # its thread waits for a writer, then for bytes
    with fifo.open("wb", buffering=0) as writer:
        writer.write(b"x" * 100)
        digest.cancel()
        writer.write(b"y" * 100)  # read after the cancel: the thread stops there
    with pytest.raises(RuntimeError, match="cancelled"):
        digest.result()


def test_it_begins_only_for_a_regular_file_of_the_size_given(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"z" * 100)
    begun = FileDigest.begin(path, 100)
    assert begun is not None and begun.result() == hashlib.sha256(b"z" * 100).hexdigest()
    assert FileDigest.begin(path, 101) is None  # small: streamed, nothing declares a hash
    assert FileDigest.begin(tmp_path, 0) is None  # a directory: packed as a .tar first
    assert FileDigest.begin(tmp_path / "missing", 0) is None  # the upload says why
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert FileDigest.begin(fifo, 0) is None
