"""``GET /healthz``: the one body that needs no token."""

from __future__ import annotations

from nimbus.wire.base import Response


class JobIsolation(Response):
    """How this server runs jobs: ``mode`` ``sandbox`` or ``none`` (unisolated);
    ``runs_jobs`` false when isolation was asked for and cannot engage (``detail`` says
    what is missing and how to fix it); ``network``: ``isolated`` (each attempt in a network
    namespace of its own, reaching only the job API, over a unix socket), ``host``
    (unisolated), ``isolated-single`` (the ``ray`` executor: a job of one worker isolated,
    the workers of a job of several on their node's network), null when no job runs."""

    mode: str
    runs_jobs: bool
    detail: str
    network: str | None = None


class Health(Response):
    """The control plane is up, and which Nimbus it runs; how it isolates jobs (absent when
    it runs no scheduler)."""

    status: str
    version: str
    job_isolation: JobIsolation | None = None
