"""What many log streams from one token cost every other caller.

One viewer token asks for ``--streams`` ``logs?follow=true`` streams of a queued job (the
scheduler is off, so they stay open) and holds the ones it gets, while another client
times ``GET /jobs``. Three runs in the same session: no streams (the baseline), the limit
lifted (``NIMBUS_MAX_LOG_STREAMS_PER_TOKEN`` very high: how main behaved), and the default
limit.

    .venv/bin/python bench/log_streams.py [--streams 500] [--calls 40]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from _common import ServerProcess, median

from nimbus.config import Settings

API = "/api/v1"
CSV = "text,label\n" + "".join(f"row {i} {'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(40))


async def hold_streams(url: str, token: str, job_id: str, count: int, ready: asyncio.Event) -> int:
    """Open ``count`` streams at once; keep those that were granted until cancelled."""
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=120
    ) as client:
        granted = 0
        opened: list[httpx.Response] = []

        async def one() -> None:
            nonlocal granted
            request = client.build_request(
                "GET", f"{API}/jobs/{job_id}/logs", params={"follow": "true"}
            )
            response = await client.send(request, stream=True)
            if response.status_code == 200:
                granted += 1
                opened.append(response)
            else:
                await response.aclose()

        await asyncio.gather(*(one() for _ in range(count)))
        ready.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            for response in opened:
                await response.aclose()
        return granted


async def time_calls(url: str, token: str, calls: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    took = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        for _ in range(calls):
            started = time.perf_counter()
            response = await client.get(f"{API}/jobs")
            response.raise_for_status()
            took.append(time.perf_counter() - started)
    return took


async def measure(server: ServerProcess, streams: int, calls: int) -> tuple[int, list[float]]:
    with server.client() as admin:
        admin.post(f"{API}/datasets/b/versions", params={"filename": "b.csv"}, content=CSV)
        job = admin.post(f"{API}/jobs", json={"dataset": "b", "model": "text"}).json()
        viewer = admin.post(f"{API}/tokens", json={"name": "v", "role": "viewer"}).json()
    ready = asyncio.Event()
    holder = None
    if streams:
        holder = asyncio.create_task(
            hold_streams(server.url, viewer["token"], job["id"], streams, ready)
        )
        await asyncio.wait_for(ready.wait(), 300)
        await asyncio.sleep(2)  # let the held streams settle into their polling
    took = await time_calls(server.url, server.admin_token, calls)
    granted = 0
    if holder is not None:
        holder.cancel()
        try:
            granted = await holder
        except asyncio.CancelledError:
            granted = -1
    return granted, took


def run(label: str, limit: int | None, streams: int, calls: int) -> float:
    env = {"NIMBUS_SCHEDULER_ENABLED": "false"}
    if limit is not None:
        env["NIMBUS_MAX_LOG_STREAMS_PER_TOKEN"] = str(limit)
    with (
        tempfile.TemporaryDirectory() as work,
        ServerProcess(Path(work) / "home", env=env) as server,
    ):
        _, took = asyncio.run(measure(server, streams, calls))
    value = median(took) * 1000
    print(f"{label:<44} GET /jobs median {value:8.1f} ms  max {max(took) * 1000:8.1f} ms")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    default = Settings().max_log_streams_per_token
    base = run("no streams (baseline)", None, 0, args.calls)
    lifted = run(
        f"{args.streams} streams, no limit (as on main)", 1_000_000, args.streams, args.calls
    )
    limited = run(
        f"{args.streams} streams, limit {default} per token", None, args.streams, args.calls
    )
    print(f"no limit: {lifted / base:.1f}x the baseline; with the limit: {limited / base:.1f}x")


if __name__ == "__main__":
    main()
