"""Helpers for tests that drive real replicas: infer load in threads, process liveness."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from tests.serving.conftest import IMAGE_SHAPE


def body(seed: int = 0) -> dict[str, Any]:
    h, w, c = IMAGE_SHAPE
    data = [(seed + i) % 256 for i in range(h * w * c)]
    return {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, h, w, c], "data": data}]}


class Load:
    """Clients sending infer requests in threads until stopped: one on a keep-alive connection,
    one opening a connection per request. Records each answer's model version, and failures."""

    def __init__(
        self, endpoint: str, name: str, retries: int = 0, token: str | None = None
    ) -> None:
        self.url = f"{endpoint}/v2/models/{name}/infer"
        self.retries = retries
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.retried = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(keep_alive,), daemon=True)
            for keep_alive in (True, False)
        ]

    def _run(self, keep_alive: bool) -> None:
        client = httpx.Client(timeout=15, headers=self.headers)
        while not self._stop.is_set():
            for attempt in range(self.retries + 1):
                try:
                    if keep_alive:
                        response = client.post(self.url, json=body())
                    else:
                        response = httpx.post(self.url, json=body(), headers=self.headers)
                except httpx.TransportError as exc:
                    if attempt < self.retries:
                        self.retried += 1
                        continue
                    self.failures.append(repr(exc))
                    break
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                else:
                    self.versions.append(response.json()["model_version"])
                break
        client.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def alive(pid: int) -> bool:
    """Running, not a zombie (reparented replicas may never be reaped here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False
