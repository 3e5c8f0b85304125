"""Shared helpers for benchmarks: a real server process, RSS sampling, medians, and a bare
uvicorn app that only drains request bodies (the upper bound of an upload)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import ServerProcess, wait_http  # noqa: E402

from nimbus.system import free_port  # noqa: E402

__all__ = [
    "ROOT",
    "DrainServer",
    "RssSampler",
    "ServerProcess",
    "cpu_seconds",
    "descendants",
    "median",
    "rss_bytes",
    "rss_of",
    "spread",
    "wait_quiet",
]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """``min-max`` of the values, for printing next to their median."""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f} {unit}"


def descendants(pid: int) -> list[int]:
    """The process's children, their children, and so on (Linux /proc), whichever of its
    threads started them."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def rss_of(pid: int) -> int:
    """Resident set size of one process in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and all its descendants."""
    return rss_of(pid) + sum(rss_of(child) for child in descendants(pid))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(
    pid: int, cpu_fraction: float = 0.05, window: float = 1.0, timeout: float = 120.0
) -> None:
    """Wait until a process tree uses under ``cpu_fraction`` of a core over ``window``
    seconds (a server warming up its executor would otherwise be measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid, *descendants(pid)]
        before = sum(_cpu_or_zero(p) for p in pids)
        time.sleep(window)
        if sum(_cpu_or_zero(p) for p in pids) - before < cpu_fraction * window:
            return


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


class RssSampler:
    """Samples RSS every few milliseconds in a thread; keeps the peaks of the process
    alone (``peak_self``) and of the process with all its descendants (``peak``)."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_self = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        own = rss_of(self.pid)
        self.peak_self = max(self.peak_self, own)
        self.peak = max(self.peak, own + sum(rss_of(c) for c in descendants(self.pid)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


async def drain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: read the whole request body, keep none of it, answer its size."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_drain(port: int) -> None:
    """Run :func:`drain_app` the way ``nimbus server`` runs its app (uvloop, httptools)."""
    import uvicorn

    uvicorn.run(
        drain_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


class DrainServer:
    """:func:`serve_drain` in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DrainServer:
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from _common import serve_drain; serve_drain({self.port})"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        wait_http(f"{self.url}/", proc=self.proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
