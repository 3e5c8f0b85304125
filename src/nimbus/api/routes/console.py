"""One-time sign-in links to the console (``nimbus ui``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Viewer
from nimbus.api.state import services_of
from nimbus.wire.console import SignInLink

router = APIRouter(tags=["console"])


@router.post("/console/links", response_model=SignInLink, status_code=201)
def create_link(request: Request, principal: Viewer) -> SignInLink:
    """A link that signs a browser in to the console as the caller's token, once, within
    two minutes. The link is the secret: open it, do not share it."""
    code = services_of(request).console.create_link(principal)
    return SignInLink(path=f"/login/link?code={code}")
