"""The console: the platform in a browser, served by the control plane under ``/``.

Server-rendered pages (Jinja2) over the same services as the REST API, with htmx for partial
updates and uPlot for charts, both vendored under ``static/vendor`` (VENDORED.md): nothing is
fetched from elsewhere, so the console works offline. See docs/console.md.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from nimbus.api.console import (
    admin,
    datasets,
    deployments,
    job_page,
    jobs_list,
    models,
    overview,
    runs,
    sign_in,
    studies,
)
from nimbus.api.console.web import HERE


def install(app: FastAPI) -> None:
    """Mount the console's pages and its static files on ``app``."""
    # Order matters where paths overlap: /jobs/new and /jobs/compare before /jobs/{id}.
    for module in (
        sign_in,
        overview,
        datasets,
        jobs_list,
        job_page,
        models,
        studies,
        runs,
        deployments,
        admin,
    ):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
