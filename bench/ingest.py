"""Ingest benchmark: prints figures, asserts nothing.

1. A 60,000-image 28x28 MNIST-format dataset (IDX, gzipped, in a tar; generated here,
   random pixels and labels) uploaded and prepared end to end through the SDK against a
   real server (target: <= 3 s).
2. 1 GiB uploads through the SDK, each timed against ``cp`` of the same file on the same
   disk in the same run (target: ratio cp / upload >= 0.5), with the server's peak RSS
   (target: <= 200 MB):

   - *refused after streaming*: random bytes, refused once received (they are no dataset):
     the transfer path alone, received, hashed and written to a staging file;
   - *upload, durable*: a valid tar whose 1 GiB is a member the IDX reader skips, next to
     100 images: the bytes received, hashed, fsynced and renamed into the blob store, and
     the stored key checked against the file's SHA-256 here; preparing 100 images is noise;
   - *upload + prepare*: a valid 1 GiB IDX tar (1.37M images) stored and prepared into
     train/val/test arrays (another 1 GiB hashed and written durably).

   Baselines of the same run: ``cp`` (page cache, as the target states it), ``cp`` +
   fsync (what a durable copy costs), and a bare uvicorn app that only drains the body,
   sent by the same httpx streaming as the SDK: the upper bound for any upload through
   this HTTP stack on this machine.

RSS is sampled every 10 ms: the server process, and the server with its children (the job
executor's fork server, torch preloaded, idle here, is one of them).

Run: .venv/bin/python bench/ingest.py [--runs N] [--size-mb M]   (files under $BENCH_DIR or
the temp dir, removed at the end)
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import (
    DrainServer,
    RssSampler,
    ServerProcess,
    cpu_seconds,
    median,
    rss_bytes,
    rss_of,
    spread,
    wait_quiet,
)

from nimbus.client import Client
from nimbus.client.transfer import CHUNK_SIZE, chunks
from nimbus.errors import NimbusError

MB = 1e6
GEN_CHUNK = 64 * 1024 * 1024


def idx_bytes(images: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    if images is not None:
        n, h, w = images.shape
        header = np.array([0x00000803, n, h, w], dtype=">u4").tobytes()
        return header + images.tobytes()
    assert labels is not None
    return np.array([0x00000801, len(labels)], dtype=">u4").tobytes() + labels.tobytes()


def write_idx_tar(path: Path, n: int, *, gz: bool, seed: int = 0) -> None:
    """An MNIST-like set of ``n`` random 28x28 images, built in memory (small sets)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    members = {
        "train-images-idx3-ubyte": idx_bytes(images=images),
        "train-labels-idx1-ubyte": idx_bytes(labels=labels),
    }
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            if gz:
                data, name = gzip.compress(data, compresslevel=1), name + ".gz"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


Member = tuple[str, int, Iterator[bytes]]


def write_tar(path: Path, members: list[Member]) -> None:
    """A plain tar of members given as (name, size, chunks), streamed to disk."""
    with path.open("wb") as out:
        for name, size, data in members:
            info = tarfile.TarInfo(name)
            info.size = size
            out.write(info.tobuf(tarfile.GNU_FORMAT))
            written = 0
            for chunk in data:
                out.write(chunk)
                written += len(chunk)
            assert written == size, (name, written, size)
            out.write(bytes(-size % tarfile.BLOCKSIZE))
        end = 2 * tarfile.BLOCKSIZE
        out.write(bytes(end + -(out.tell() + end) % tarfile.RECORDSIZE))


def random_chunks(rng: np.random.Generator, size: int, head: bytes = b"") -> Iterator[bytes]:
    yield head
    left = size - len(head)
    while left:
        step = min(left, GEN_CHUNK)
        yield rng.bytes(step)
        left -= step


def idx_members(rng: np.random.Generator, n: int) -> list[Member]:
    """Uncompressed IDX image and label members of ``n`` random 28x28 images."""
    image_head = np.array([0x00000803, n, 28, 28], dtype=">u4").tobytes()
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return [
        ("train-images-idx3-ubyte", 16 + n * 784, random_chunks(rng, 16 + n * 784, image_head)),
        ("train-labels-idx1-ubyte", 8 + n, iter([idx_bytes(labels=labels)])),
    ]


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def copy(src: Path, dst: Path, *, durable: bool) -> None:
    """``cp``; with ``durable``, the copy fsynced too (as the blob store does)."""
    subprocess.run(["cp", str(src), str(dst)], check=True)
    if durable:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drain(url: str, path: Path) -> None:
    """Send a file the way the SDK does (httpx streaming its chunks) to the drain app."""
    size = path.stat().st_size
    response = httpx.post(
        url,
        content=chunks(path, size, None),
        timeout=None,
        headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
    )
    response.raise_for_status()
    assert int(response.text) == size


class Figures:
    """Times and RSS peaks per measured case, across runs."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.peaks: dict[str, list[int]] = {}
        self.peaks_self: dict[str, list[int]] = {}
        self.cpu: dict[str, list[float]] = {}

    def add(self, case: str, seconds: float, rss: RssSampler | None = None) -> None:
        self.times.setdefault(case, []).append(seconds)
        if rss is not None:
            self.peaks.setdefault(case, []).append(rss.peak)
            self.peaks_self.setdefault(case, []).append(rss.peak_self)

    def measure(self, case: str, pid: int | None, action: Callable[[], Any]) -> Any:
        if pid is None:
            start = time.perf_counter()
            result = action()
            self.add(case, time.perf_counter() - start)
            return result
        cpu = cpu_seconds(pid)
        with RssSampler(pid) as rss:
            start = time.perf_counter()
            result = action()
            seconds = time.perf_counter() - start
        self.add(case, seconds, rss)
        self.cpu.setdefault(case, []).append(cpu_seconds(pid) - cpu)
        return result


def print_mnist(figures: Figures, size: int) -> None:
    times = figures.times["mnist"]
    print(
        f"(a) 60k 28x28 IDX ({size / MB:.1f} MB tar of gzipped members), upload+prepare: "
        f"median {median(times):.2f} s (range {spread(times)}; target <= 3 s); "
        f"server peak RSS {max(figures.peaks_self['mnist']) / MB:.0f} MB"
    )


def print_big(figures: Figures, size: int, runs: int, images: int) -> None:
    cp = median(figures.times["cp"])
    cp_sync = median(figures.times["cp+fsync"])
    print(
        f"(b) {size / 2**20:.0f} MiB files; medians over {runs} runs (range); "
        "ratio = baseline time / upload time (throughput ratio), target >= 0.5 vs cp"
    )
    print(
        f"    {'case':<34}{'median':>8}  {'range':<14}{'MiB/s':>7}{'vs cp':>7}"
        f"{'vs cp+fsync':>13}{'server CPU':>12}{'server RSS':>12}{'+children':>11}"
    )
    rows = [
        ("cp", "cp (page cache)"),
        ("cp+fsync", "cp + fsync (durable copy)"),
        ("drain", "bare uvicorn drain (upper bound)"),
        ("refused", "refused after streaming"),
        ("durable", "upload, durable + verified"),
        ("full", f"upload + prepare ({images / 1e6:.2f}M images)"),
    ]
    for case, label in rows:
        times = figures.times[case]
        t = median(times)
        served = case in figures.peaks
        cpu = f"{median(figures.cpu[case]):>10.2f} s" if served else ""
        peak = f"{max(figures.peaks_self[case]) / MB:>9.0f} MB" if served else ""
        tree = f"{max(figures.peaks[case]) / MB:>8.0f} MB" if served else ""
        print(
            f"    {label:<34}{t:>7.2f}s  {spread(times):<14}{size / t / 2**20:>7.0f}"
            f"{cp / t:>7.2f}{cp_sync / t:>13.2f}{cpu:>12}{peak:>12}{tree:>11}"
        )
    print(
        "    (RSS: the highest peak over the runs; server CPU: median user+system seconds of "
        "the server process)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB of the big files")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-", dir=os.environ.get("BENCH_DIR")))
    server = ServerProcess(work / "home")
    figures = Figures()
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        client = Client(server.url, server.admin_token)
        wait_quiet(pid)  # the executor's fork server imports torch at start
        print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            f"server idle: RSS {rss_of(pid) / MB:.0f} MB; with children "
            f"{rss_bytes(pid) / MB:.0f} MB (the job executor's fork server, torch loaded)"
        )

        mnist = work / "mnist.tar"
        write_idx_tar(mnist, 60_000, gz=True)
        for run in range(args.runs):
            figures.measure(
                "mnist", pid, lambda r=run: client.upload_dataset(f"mnist-{r}", mnist, seed=r)
            )
        print_mnist(figures, mnist.stat().st_size)

        size = args.size_mb * 2**20
        rng = np.random.default_rng(1)
        junk, light, full = work / "junk.bin", work / "light.tar", work / "full.tar"
        with junk.open("wb") as out:
            for chunk in random_chunks(rng, size):
                out.write(chunk)
        write_tar(light, [("README.bin", size, chunks(junk, size, None)), *idx_members(rng, 100)])
        write_tar(full, idx_members(rng, size // 784))
        light_key = sha256_of(light)
        print(
            f"    (files: {size / 2**20:.0f} MiB random; {light.stat().st_size / 2**20:.0f} "
            f"MiB tar of that + 100 images; {full.stat().st_size / 2**20:.0f} MiB IDX tar "
            f"of {size // 784} images; SDK chunks of {CHUNK_SIZE // 1024} KiB)"
        )

        with DrainServer() as bare:
            copied = work / "copy.bin"
            for run in range(args.runs):
                figures.measure("cp", None, lambda: copy(junk, copied, durable=False))
                copied.unlink()
                figures.measure("cp+fsync", None, lambda: copy(junk, copied, durable=True))
                copied.unlink()
                figures.measure("drain", None, lambda: drain(bare.url, junk))
                wait_quiet(pid)

                def refused() -> None:
                    with contextlib.suppress(NimbusError):
                        client.upload_dataset("junk", junk, format="npz")
                        raise AssertionError("random bytes were accepted as a dataset")

                figures.measure("refused", pid, refused)
                wait_quiet(pid)
                version = figures.measure(
                    "durable", pid, lambda r=run: client.upload_dataset(f"light-{r}", light, seed=r)
                )
                source = version.files["source"]
                assert source.key.endswith(light_key), "stored bytes differ from the file"
                assert source.size == light.stat().st_size
                client.delete_dataset(f"light-{run}")
                wait_quiet(pid)
                figures.measure(
                    "full", pid, lambda r=run: client.upload_dataset(f"full-{r}", full, seed=r)
                )
                client.delete_dataset(f"full-{run}")
                wait_quiet(pid)
        print_big(figures, size, args.runs, size // 784)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
