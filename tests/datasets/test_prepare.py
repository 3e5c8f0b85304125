"""Writing split files window by window, from arrays and from files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from nimbus.datasets.prepare import write_splits
from nimbus.datasets.rows import FileRows, NpyWriter, RowSource, windows
from nimbus.datasets.splits import plan_splits


def test_write_splits_across_parts_and_many_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (37, 3, 2), dtype=np.uint8)
    second = rng.integers(0, 256, (25, 3, 2), dtype=np.uint8)
    raw = tmp_path / "second.raw"
    raw.write_bytes(b"junk" + second.tobytes())
    parts: list[RowSource] = [first, FileRows(raw, 4, np.dtype(np.uint8), second.shape)]
    everything = np.concatenate([first, second])
    y = np.arange(62) % 3
    plan = plan_splits(y, 3, seed=3, val_fraction=0.2, test_fraction=0.2)
    files = write_splits(parts, None, y, plan, tmp_path, window_bytes=13)  # 2 rows a window
    for split, idx in plan.indices.items():
        x = np.load(files[f"{split}_x.npy"].path, mmap_mode="r", allow_pickle=False)
        assert np.array_equal(x, everything[idx])
        assert np.array_equal(np.load(files[f"{split}_y.npy"].path), y[idx])


def test_write_splits_casts_to_the_stored_dtype(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.arange(10) % 2
    plan = plan_splits(y, 2, seed=0, val_fraction=0.0, test_fraction=0.0)
    files = write_splits([x], np.dtype(np.float32), y, plan, tmp_path)
    train = np.load(files["train_x.npy"].path, allow_pickle=False)
    assert train.dtype == np.float32 and np.array_equal(train, x)


def test_file_rows_from_npy_reads_windows_and_refuses_objects(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int32).reshape(6, 4)
    np.save(tmp_path / "a.npy", array)
    rows = FileRows.from_npy(tmp_path / "a.npy")
    assert rows.shape == (6, 4) and len(rows) == 6
    assert np.array_equal(np.concatenate([w for _, w in windows(rows, 40)]), array)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        FileRows.from_npy(tmp_path / "o.npy")


def test_npy_writer_checks_its_row_count(tmp_path: Path) -> None:
    writer = NpyWriter(tmp_path / "w.npy", np.dtype(np.uint8), (2,), 3)
    writer.write(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="wrote 2 rows, header says 3"):
        writer.close()


def test_split_files_come_with_the_hash_of_their_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (50, 4, 4, 1), dtype=np.uint8)
    y = np.arange(50) % 2
    plan = plan_splits(y, 2, seed=1, val_fraction=0.2, test_fraction=0.2)
    files = write_splits([x], None, y, plan, tmp_path, window_bytes=100)
    assert sorted(files) == sorted(f"{s}_{a}.npy" for s in ("train", "val", "test") for a in "xy")
    for name, written in files.items():
        data = written.path.read_bytes()
        assert written.path == tmp_path / name and written.size == len(data)
        assert written.sha256 == hashlib.sha256(data).hexdigest()


def test_windows_reusing_one_buffer_cover_the_file(tmp_path: Path) -> None:
    array = np.arange(7 * 3, dtype=np.int16).reshape(7, 3)
    np.save(tmp_path / "a.npy", array)
    rows = FileRows.from_npy(tmp_path / "a.npy")
    seen = [(start, window.copy()) for start, window in windows(rows, 12, reuse=True)]
    assert [start for start, _ in seen] == [0, 2, 4, 6]
    assert np.array_equal(np.concatenate([w for _, w in seen]), array)


def test_a_file_shorter_than_its_rows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "short.raw").write_bytes(bytes(10))
    rows = FileRows(tmp_path / "short.raw", 0, np.dtype(np.uint8), (4, 3))
    with pytest.raises(ValueError, match="ends before"):
        list(windows(rows, 6, reuse=True))
