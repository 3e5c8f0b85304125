"""The MLflow model registry: registered models, their versions (answered READY at once:
the files stay where the client logged them) and aliases, in the caller's tenant.

It records what MLflow clients register; serving goes through Nimbus's own registry
(``nimbus models``), which holds verified, servable model files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from nimbus.db import tracking_registry as repo
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.db.tracking_tables import ModelVersionRow, RegisteredModelRow
from nimbus.errors import InvalidInput, NotFound
from nimbus.security import Principal, Role, require_role
from nimbus.services import tracking_search as search
from nimbus.services.tracking_views import model_view, version_view
from nimbus.wire import tracking as wire


def parse_version(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise InvalidInput(f"invalid model version {text[:40]!r}: a positive whole number")
    return int(text)


class TrackingRegistryService:
    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def _model(self, session: Session, principal: Principal, name: str) -> RegisteredModelRow:
        found = repo.model(session, principal.tenant_id, name)
        if found is None:
            raise NotFound(f"no registered model named {name[:256]!r}")
        return found

    def _version(
        self, session: Session, principal: Principal, name: str, version: str
    ) -> tuple[RegisteredModelRow, ModelVersionRow]:
        model = self._model(session, principal, name)
        found = repo.version(session, model.id, parse_version(version))
        if found is None:
            raise NotFound(f"registered model {name!r} has no version {version}")
        return model, found

    def _latest(self, session: Session, model: RegisteredModelRow) -> ModelVersionRow | None:
        return repo.version(session, model.id, model.last_version) if model.last_version else None

    def create_model(
        self, principal: Principal, body: wire.CreateRegisteredModel
    ) -> dict[str, Any]:
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            row = repo.create_model(
                session,
                principal.tenant_id,
                body.name,
                body.description,
                {t.key: t.value for t in body.tags},
                self.clock(),
            )
            return model_view(row, None)

    def get_model(self, principal: Principal, name: str) -> dict[str, Any]:
        with self.db.session() as session:
            model = self._model(session, principal, name)
            return model_view(model, self._latest(session, model))

    def search_models(
        self,
        principal: Principal,
        filter_text: str | None,
        max_results: int,
        page_token: str | None,
    ) -> dict[str, Any]:
        clauses = search.parse_filter(filter_text)
        with self.db.session() as session:
            views = [
                model_view(m, self._latest(session, m))
                for m in repo.models(session, principal.tenant_id)
            ]

        def of(view: dict[str, Any]) -> search.Searchable:
            return search.Searchable(
                {"name": view["name"]}, tags={t["key"]: t["value"] for t in view["tags"]}
            )

        chosen, token = search.page(
            [v for v in views if search.matches(of(v), clauses)], max_results, page_token
        )
        answer: dict[str, Any] = {"registered_models": chosen}
        if token:
            answer["next_page_token"] = token
        return answer

    def create_version(self, principal: Principal, body: wire.CreateModelVersion) -> dict[str, Any]:
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            model = self._model(session, principal, body.name)
            row = repo.create_version(
                session,
                model,
                body.source,
                body.run_id or None,
                body.description,
                {t.key: t.value for t in body.tags},
                self.clock(),
            )
            session.refresh(model)
            return version_view(model, row)

    def get_version(self, principal: Principal, name: str, version: str) -> dict[str, Any]:
        with self.db.session() as session:
            return version_view(*self._version(session, principal, name, version))

    def latest_versions(self, principal: Principal, name: str) -> dict[str, Any]:
        with self.db.session() as session:
            model = self._model(session, principal, name)
            latest = self._latest(session, model)
            return {"model_versions": [] if latest is None else [version_view(model, latest)]}

    def search_versions(
        self,
        principal: Principal,
        filter_text: str | None,
        max_results: int,
        page_token: str | None,
    ) -> dict[str, Any]:
        clauses = search.parse_filter(filter_text)
        with self.db.session() as session:
            models = {m.id: m for m in repo.models(session, principal.tenant_id)}
            rows = repo.versions(session, list(models))
            views = [version_view(models[r.model_id], r) for r in rows]

        def of(view: dict[str, Any]) -> search.Searchable:
            attributes = {"name": view["name"], "run_id": view.get("run_id")}
            return search.Searchable(attributes, tags={t["key"]: t["value"] for t in view["tags"]})

        chosen, token = search.page(
            [v for v in views if search.matches(of(v), clauses)], max_results, page_token
        )
        answer: dict[str, Any] = {"model_versions": chosen}
        if token:
            answer["next_page_token"] = token
        return answer

    def set_alias(self, principal: Principal, body: wire.RegisteredModelAlias) -> None:
        require_role(principal, Role.MEMBER)
        if body.alias.lower() == "latest" or (
            body.alias.lower().startswith("v") and body.alias[1:].isdigit()
        ):
            raise InvalidInput(f"alias {body.alias!r} is reserved (latest, vN)")
        with self.db.session(write=True) as session:
            model, row = self._version(session, principal, body.name, body.version)
            repo.set_aliases(
                session, model, {**model.aliases, body.alias: row.version}, self.clock()
            )

    def delete_alias(self, principal: Principal, name: str, alias: str) -> None:
        require_role(principal, Role.MEMBER)
        with self.db.session(write=True) as session:
            model = self._model(session, principal, name)
            if alias not in model.aliases:
                raise NotFound(f"registered model {name!r} has no alias {alias!r}")
            repo.set_aliases(
                session, model, {a: v for a, v in model.aliases.items() if a != alias}, self.clock()
            )

    def by_alias(self, principal: Principal, name: str, alias: str) -> dict[str, Any]:
        with self.db.session() as session:
            model = self._model(session, principal, name)
            if alias not in model.aliases:
                raise NotFound(f"registered model {name!r} has no alias {alias!r}")
            return version_view(*self._version(session, principal, name, str(model.aliases[alias])))
