"""Model cards and datasheets of dataset versions: read in JSON, Markdown or HTML, their
person-written text edited."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response

from nimbus.api.auth import Member, Viewer
from nimbus.api.state import services_of
from nimbus.services.card_markdown import as_html, card_markdown, datasheet_markdown
from nimbus.services.datasets import parse_version
from nimbus.services.models import parse_version_ref
from nimbus.wire.cards import CardText, Datasheet, DatasheetText, ModelCard

router = APIRouter(tags=["models"])

MARKDOWN = "text/markdown; charset=utf-8"
# The page shows a person's text: nothing in it may run or load anything.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
CARD_FORMATS: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/markdown": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
        },
        "description": "The card as JSON (format=json), Markdown (md) or HTML (html).",
    }
}
SHEET_FORMATS: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/markdown": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
        },
        "description": "The datasheet as JSON (format=json), Markdown (md) or HTML (html).",
    }
}


@router.get("/models/{name}/versions/{v}/card", response_model=ModelCard, responses=CARD_FORMATS)
def get_card(
    name: str,
    v: str,
    principal: Viewer,
    request: Request,
    format: Literal["json", "md", "html"] = "json",
) -> ModelCard | Response:
    """The version's model card, generated now from its lineage, the job's evaluation and
    the dataset version's counts, with what a person wrote."""
    card = services_of(request).cards.model_card(principal, name, parse_version_ref(v))
    return _card_as(card, format)


@router.patch("/models/{name}/versions/{v}/card", response_model=ModelCard)
def edit_card(name: str, v: str, body: CardText, principal: Member, request: Request) -> ModelCard:
    """Set the fields the body gives (null or "" clears one); returns the card (JSON)."""
    return services_of(request).cards.edit(principal, name, parse_version_ref(v), body)


@router.get(
    "/datasets/{name}/versions/{v}/datasheet",
    response_model=Datasheet,
    responses=SHEET_FORMATS,
    tags=["datasets"],
)
def get_datasheet(
    name: str,
    v: str,
    principal: Viewer,
    request: Request,
    format: Literal["json", "md", "html"] = "json",
) -> Datasheet | Response:
    """The dataset version's datasheet: source, format, size, per-class counts, splits and
    how they were made, hashes, who uploaded it and when, with what a person wrote."""
    sheet = services_of(request).cards.datasheet(principal, name, parse_version(v))
    return _sheet_as(sheet, format)


@router.patch(
    "/datasets/{name}/versions/{v}/datasheet", response_model=Datasheet, tags=["datasets"]
)
def edit_datasheet(
    name: str, v: str, body: DatasheetText, principal: Member, request: Request
) -> Datasheet:
    """Set the fields the body gives (null or "" clears one); returns the datasheet (JSON)."""
    return services_of(request).cards.edit_datasheet(principal, name, parse_version(v), body)


def _sheet_as(sheet: Datasheet, format: str) -> Datasheet | Response:
    if format == "json":
        return sheet
    markdown = datasheet_markdown(sheet)
    if format == "md":
        return Response(markdown, media_type=MARKDOWN)
    title = f"Datasheet for {sheet.dataset}:{sheet.version}"
    return Response(
        as_html(markdown, title), media_type="text/html; charset=utf-8", headers=HTML_HEADERS
    )


def _card_as(card: ModelCard, format: str) -> ModelCard | Response:
    if format == "json":
        return card
    markdown = card_markdown(card)
    if format == "md":
        return Response(markdown, media_type=MARKDOWN)
    title = f"Model card for {card.model_details.name}:{card.model_details.version}"
    return Response(
        as_html(markdown, title), media_type="text/html; charset=utf-8", headers=HTML_HEADERS
    )
