"""Model cards and datasheets: read what they are generated from, store what a person wrote.

The generation itself is :mod:`nimbus.services.card_content` (pure), the Markdown and HTML
forms :mod:`nimbus.services.card_markdown`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy.orm import Session

from nimbus.db import datasets as dataset_repo
from nimbus.db import tokens as token_repo
from nimbus.db.engine import Database
from nimbus.db.tables import DatasetVersion as DatasetVersionRow
from nimbus.db.tables import ModelVersionRow, utcnow
from nimbus.security import Principal, Role, require_role
from nimbus.services import card_content
from nimbus.services.datasets import find_dataset_version
from nimbus.services.datasets import version_view as dataset_view
from nimbus.services.models import VersionRef, find_model, find_version, version_with_aliases
from nimbus.wire.cards import CardText, Datasheet, DatasheetText, ModelCard
from nimbus.wire.datasets import DatasetVersion
from nimbus.wire.models import ModelVersion


class CardService:
    """Cards of every tenant's model versions and datasheets of their dataset versions;
    each method acts for one principal, within its tenant."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def model_card(self, principal: Principal, name: str, ref: VersionRef) -> ModelCard:
        """The card of a model version, generated now."""
        with self.db.session() as session:
            row, view = self._version(session, principal, name, ref)
            return self._card(session, principal, row, view)

    def edit(self, principal: Principal, name: str, ref: VersionRef, text: CardText) -> ModelCard:
        """Replace the fields ``text`` sets (null or "" clears one); the card after."""
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            row, view = self._version(session, principal, name, ref)
            given = {f: getattr(text, f) for f in text.model_fields_set}
            row.card = card_content.edited_text(  # a new dict: the JSON column sees the change
                row.card, card_content.TEXT_FIELDS, given, principal.token_id, self.clock()
            )
            session.flush()
            return self._card(session, principal, row, view)

    def datasheet(self, principal: Principal, name: str, version: int | None) -> Datasheet:
        """The datasheet of a dataset version (None: the latest)."""
        with self.db.session() as session:
            return self._sheet(
                session, principal, find_dataset_version(session, principal, name, version), name
            )

    def edit_datasheet(
        self, principal: Principal, name: str, version: int | None, text: DatasheetText
    ) -> Datasheet:
        """Replace the datasheet fields ``text`` sets (null or "" clears one); the sheet
        after."""
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            row = find_dataset_version(session, principal, name, version)
            given = {f: getattr(text, f) for f in text.model_fields_set}
            row.datasheet = card_content.edited_text(
                row.datasheet, card_content.SHEET_FIELDS, given, principal.token_id, self.clock()
            )
            session.flush()
            return self._sheet(session, principal, row, name)

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _sheet(
        session: Session, principal: Principal, row: DatasetVersionRow, name: str
    ) -> Datasheet:
        text = row.datasheet or {}
        people = _names(session, principal.tenant_id, [row.created_by, text.get("updated_by")])
        options = (row.info or {}).get("options") or {}
        return card_content.datasheet(dataset_view(row, name), options, people, text)

    def _version(
        self, session: Session, principal: Principal, name: str, ref: VersionRef
    ) -> tuple[ModelVersionRow, ModelVersion]:
        model = find_model(session, principal, name)
        row = find_version(session, model, ref)
        return row, version_with_aliases(session, model, row)

    def _card(
        self, session: Session, principal: Principal, row: ModelVersionRow, view: ModelVersion
    ) -> ModelCard:
        text = row.card or {}
        people = _names(session, principal.tenant_id, [view.created_by, text.get("updated_by")])
        dataset = self._trained_on(session, principal, view)
        return card_content.model_card(view, text, dataset, people)

    @staticmethod
    def _trained_on(
        session: Session, principal: Principal, view: ModelVersion
    ) -> DatasetVersion | None:
        """The dataset version the model was trained on, if it is still there (the same
        content: a dataset deleted and uploaded again reuses its version numbers)."""
        lineage = view.dataset
        if lineage.name is None or lineage.version is None:
            return None
        dataset = dataset_repo.get_dataset(session, principal.tenant_id, lineage.name)
        row = (
            None
            if dataset is None
            else dataset_repo.get_version(session, dataset.id, lineage.version)
        )
        if row is None or (lineage.content_hash and row.content_hash != lineage.content_hash):
            return None
        return dataset_view(row, lineage.name)


def _names(session: Session, tenant_id: int, token_ids: Iterable[str | None]) -> dict[str, str]:
    """The names of the tenant's tokens among ``token_ids`` (a deleted one has none)."""
    found = {}
    for token_id in {t for t in token_ids if t}:
        token = token_repo.get(session, token_id)
        if token is not None and token.tenant_id == tenant_id:
            found[token_id] = token.name
    return found
