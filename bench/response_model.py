"""What ``response_model`` costs on ``GET /api/v1/jobs?limit=1000``.

A route declared with ``response_model`` that returns the model its service built has
FastAPI validate it against that model again before serialising it. Is that second pass
worth removing (answer ``Response(model.model_dump_json())``, keeping ``response_model``
for the OpenAPI document)? Both run in the same app, over the same 1000 jobs, through the
ASGI interface (no sockets: the HTTP stack is the same either way): the real route, and the
same service call answered with the model's own JSON. Interleaved rounds, medians of CPU
time; the bodies are checked to be identical.

Measured with FastAPI 0.165 / pydantic 2.14: no difference (within noise). FastAPI there
passes an instance of the model through validation untouched (pydantic's
``revalidate_instances="never"``: 0.0 ms for 1000 jobs) and serialises it to JSON in
pydantic-core (``serialize_json``), as ``model_dump_json`` would; building the page in the
service (the query and the 1000 ``Job`` models) is most of the request. So the routes keep
``response_model``.

    .venv/bin/python bench/response_model.py [--jobs 1000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _common import median, spread
from fastapi import Request, Response
from tests.helpers_models import add_job

from nimbus.api.app import create_app
from nimbus.api.auth import Viewer
from nimbus.api.state import services_of
from nimbus.config import Settings
from nimbus.server import bootstrap, build_services
from nimbus.wire.jobs import JobList

API = "/api/v1"
EVALUATION = {
    "accuracy": 0.91,
    "precision": 0.9,
    "recall": 0.89,
    "f1": 0.895,
    "support": 1000,
    "per_class": {c: {"precision": 0.9, "recall": 0.9, "f1": 0.9} for c in "abcdefghij"},
}


def dumped(principal: Viewer, request: Request, limit: int = 100) -> Response:
    """The same page, as the JSON the model writes itself: FastAPI passes a Response on."""
    page = services_of(request).jobs.list_jobs(principal, None, limit)
    return Response(page.model_dump_json(by_alias=True), media_type="application/json")


async def timed(client: httpx.AsyncClient, path: str) -> tuple[float, bytes]:
    """The CPU time of this process (all its threads) for one request: on a shared,
    loaded machine, wall time mostly measures the neighbours."""
    started = time.process_time()
    response = await client.get(path)
    took = time.process_time() - started
    assert response.status_code == 200, response.text[:300]
    return took, response.content


async def measure(app: Any, secret: str, jobs: int, rounds: int) -> dict[str, list[float]]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {secret}"}
    paths = {
        "response_model (the route)": f"{API}/jobs?limit={jobs}",
        "model_dump_json Response": f"/bench/dumped?limit={jobs}",
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://nimbus", headers=headers, timeout=120
    ) as client:
        bodies = {name: (await timed(client, path))[1] for name, path in paths.items()}
        assert len(set(bodies.values())) == 1, "the two routes answer different bodies"
        for _ in range(rounds):
            for name, path in paths.items():
                times[name].append((await timed(client, path))[0])
    return times


def split(app: Any, services: Any, secret: str, jobs: int, rounds: int) -> dict[str, float]:
    """Median CPU milliseconds of the parts: the service building the page, FastAPI's
    validation of it against the route's ``response_model``, its serialisation to JSON."""
    # The bench's own route declares the same response_model as the real one.
    route = next(r for r in app.routes if getattr(r, "path", "") == "/bench/dumped")
    field = route.response_field
    principal = services.tokens.authenticate(secret)
    page = services.jobs.list_jobs(principal, None, jobs)
    parts: dict[str, Callable[[], object]] = {
        "service (query + models)": lambda: services.jobs.list_jobs(principal, None, jobs),
        "response_model validation": lambda: field.validate(page, {}, loc=("response",)),
        "serialisation to JSON": lambda: page.model_dump_json(by_alias=True),
    }
    found: dict[str, float] = {}
    for name, part in parts.items():
        spent = []
        for _ in range(rounds):
            started = time.process_time()
            part()
            spent.append(time.process_time() - started)
        found[name] = median(spent) * 1000
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp) / "home", scheduler_enabled=False)
        secret = bootstrap(settings)
        assert secret is not None
        services = build_services(settings)
        try:
            for _ in range(args.jobs):
                add_job(services.db, services.blobs, "default", None, evaluation=EVALUATION)
            app = create_app(services)
            app.get("/bench/dumped", response_model=JobList)(dumped)
            times = asyncio.run(measure(app, secret, args.jobs, args.rounds))
            parts = split(app, services, secret, args.jobs, args.rounds)
        finally:
            services.db.dispose()
    base = median(times["response_model (the route)"])
    print(
        f"GET /jobs?limit={args.jobs}, {args.rounds} interleaved rounds, "
        "median CPU time per request (range):"
    )
    for name, values in times.items():
        ratio = median(values) / base
        figure = f"{median(values) * 1000:7.1f} ms ({spread(values, 's', 3)})"
        print(f"  {name:26} {figure}  x{ratio:.2f}")
    print("where the route's time goes (median CPU time):")
    for name, spent in parts.items():
        print(f"  {name:26} {spent:7.1f} ms")


if __name__ == "__main__":
    main()
