"""Ingest benchmark: prints figures, asserts nothing.

1. A 60,000-image 28x28 MNIST-format dataset (IDX, gzipped, in a tar — generated here, random
   pixels and labels) uploaded and prepared end to end through the SDK against a real server.
2. A 1 GiB upload: throughput as a ratio to `cp` of the same file on the same disk, measured in
   the same run, and the server's peak RSS during it. The file is a valid uncompressed IDX tar
   (1.37M images), so the figure includes preparation; a second figure uploads 1 GiB that is
   refused after streaming (random bytes), which isolates the transfer path.

Run: .venv/bin/python bench/ingest.py [--runs N] [--size-mb M]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RssSampler, ServerProcess, median

from nimbus.client import Client
from nimbus.errors import NimbusError


def idx_bytes(images: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    if images is not None:
        n, h, w = images.shape
        header = np.array([0x00000803, n, h, w], dtype=">u4").tobytes()
        return header + images.tobytes()
    assert labels is not None
    return np.array([0x00000801, len(labels)], dtype=">u4").tobytes() + labels.tobytes()


def write_idx_tar(path: Path, n: int, *, gz: bool, seed: int = 0) -> None:
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


def timed_cp(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nimbus-bench-", dir=os.environ.get("BENCH_DIR")))
    server = ServerProcess(work / "home").start()
    try:
        client = Client(server.url, server.admin_token)
        assert server.proc is not None

        mnist = work / "mnist.tar"
        write_idx_tar(mnist, 60_000, gz=True)
        times = []
        for run in range(args.runs):
            start = time.perf_counter()
            client.upload_dataset(f"mnist-{run}", mnist, seed=run)
            times.append(time.perf_counter() - start)
        print(f"60k 28x28 IDX ({mnist.stat().st_size / 1e6:.1f} MB tar.gz members): "
              f"upload+prepare median {median(times):.2f} s over {args.runs} runs "
              f"(all: {', '.join(f'{t:.2f}' for t in times)}; target <= 3 s)")

        n_big = args.size_mb * 1024 * 1024 // 784
        big = work / "big.tar"
        write_idx_tar(big, n_big, gz=False, seed=1)
        junk = work / "junk.bin"
        with open(junk, "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1024 * 1024))
        size = big.stat().st_size
        cps, ups, raws, peaks = [], [], [], []
        for run in range(args.runs):
            cps.append(timed_cp(big, work / "copy.tar"))
            with RssSampler(server.proc.pid) as rss:
                start = time.perf_counter()
                client.upload_dataset(f"big-{run}", big, seed=run)
                ups.append(time.perf_counter() - start)
            peaks.append(rss.peak)
            with RssSampler(server.proc.pid) as rss:
                start = time.perf_counter()
                with contextlib.suppress(NimbusError):
                    client.upload_dataset(f"junk-{run}", junk, format="npz")
                raws.append(time.perf_counter() - start)
            peaks.append(rss.peak)
            client.delete_dataset(f"big-{run}")
        cp_t = median(cps)
        print(f"1 GiB upload ({size / 2**20:.0f} MiB): cp median {cp_t:.2f} s "
              f"({size / cp_t / 2**20:.0f} MiB/s)")
        print(f"  upload+prepare (valid IDX tar): median {median(ups):.2f} s -> ratio to cp "
              f"{cp_t / median(ups):.2f} (target >= 0.5)")
        print(f"  transfer only (refused after streaming): median {median(raws):.2f} s -> "
              f"ratio to cp {cp_t / median(raws):.2f}")
        print(f"  peak server RSS during uploads: {max(peaks) / 2**20:.0f} MiB (target <= 200 MB)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
