"""Liveness: the one route that needs no token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from nimbus import __version__

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}
