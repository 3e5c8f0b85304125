"""Writing split files window by window, from arrays and from files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nimbus.datasets.prepare import write_splits
from nimbus.datasets.rows import FileRows, NpyWriter, windows
from nimbus.datasets.splits import plan_splits


def test_write_splits_across_parts_and_many_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (37, 3, 2), dtype=np.uint8)
    second = rng.integers(0, 256, (25, 3, 2), dtype=np.uint8)
    raw = tmp_path / "second.raw"
    raw.write_bytes(b"junk" + second.tobytes())
    parts = [first, FileRows(raw, 4, np.dtype(np.uint8), second.shape)]
    everything = np.concatenate([first, second])
    y = np.arange(62) % 3
    plan = plan_splits(y, 3, seed=3, val_fraction=0.2, test_fraction=0.2)
    files = write_splits(parts, None, y, plan, tmp_path, window_bytes=13)  # 2 rows a window
    for split, idx in plan.indices.items():
        x = np.load(files[f"{split}_x.npy"], mmap_mode="r", allow_pickle=False)
        assert np.array_equal(x, everything[idx])
        assert np.array_equal(np.load(files[f"{split}_y.npy"]), y[idx])


def test_write_splits_casts_to_the_stored_dtype(tmp_path: Path) -> None:
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.arange(10) % 2
    plan = plan_splits(y, 2, seed=0, val_fraction=0.0, test_fraction=0.0)
    files = write_splits([x], np.dtype(np.float32), y, plan, tmp_path)
    train = np.load(files["train_x.npy"], allow_pickle=False)
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
