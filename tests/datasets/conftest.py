"""Builders for dataset uploads: every test makes its own data with numpy and PIL."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nimbus.datasets.domain import IngestLimits, IngestOptions, PreparedDataset
from nimbus.datasets.ingest import ingest


@dataclass
class Build:
    """Makes upload files under one directory and runs ingest on them."""

    root: Path

    def png(self, width: int = 8, height: int = 8, mode: str = "L", seed: int = 0) -> bytes:
        return self.image(width, height, mode, seed, "PNG")

    def image(self, width: int, height: int, mode: str, seed: int, fmt: str) -> bytes:
        channels = 3 if mode == "RGB" else 1
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels))
        array = pixels.astype(np.uint8).squeeze(axis=2) if channels == 1 else pixels
        out = io.BytesIO()
        Image.fromarray(array.astype(np.uint8), mode=mode).save(out, format=fmt)
        return out.getvalue()

    def zip(
        self,
        name: str,
        members: dict[str, bytes],
        compression: int = zipfile.ZIP_DEFLATED,
        extra: Iterable[tuple[zipfile.ZipInfo, bytes]] = (),
    ) -> Path:
        path = self.root / name
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for member, data in members.items():
                zf.writestr(member, data)
            for info, data in extra:
                zf.writestr(info, data)
        return path

    def tar(
        self,
        name: str,
        members: dict[str, bytes],
        gz: bool = False,
        extra: Iterable[tarfile.TarInfo] = (),
    ) -> Path:
        path = self.root / name
        with tarfile.open(path, "w:gz" if gz else "w") as tf:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for info in extra:
                tf.addfile(info)
        return path

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def run(
        self,
        source: Path,
        filename: str | None = None,
        limits: IngestLimits | None = None,
        **options: Any,
    ) -> PreparedDataset:
        workdir = self.root / f"work-{len(list(self.root.glob('work-*')))}"
        workdir.mkdir()
        name = source.name if filename is None else filename
        return ingest(source, name, IngestOptions(**options), limits or IngestLimits(), workdir)

    @staticmethod
    def idx(array: np.ndarray, magic: int | None = None) -> bytes:
        """An IDX file: magic, big-endian dims, then the unsigned bytes."""
        if magic is None:
            magic = 0x0800 | array.ndim
        dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()

    @staticmethod
    def gz(data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=1, mtime=0)

    @staticmethod
    def load(prepared: PreparedDataset, name: str) -> np.ndarray:
        array: np.ndarray = np.load(prepared.files[name], mmap_mode="r", allow_pickle=False)
        return array


@pytest.fixture
def build(tmp_path: Path) -> Build:
    return Build(tmp_path)
