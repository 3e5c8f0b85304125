"""Model cards and datasheets: generated from a real evaluation and dataset version rows on
both metadata stores (migration 0014), rendered as Markdown that huggingface_hub parses,
and as HTML in which nothing a person or a label holds can run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic import command
from huggingface_hub import ModelCard as HubCard
from huggingface_hub import ModelCardData
from markdown_it import MarkdownIt
from sqlalchemy import inspect

from nimbus.db import datasets as dataset_repo
from nimbus.db import registry as repo
from nimbus.db import tenants, tokens
from nimbus.db.engine import Database
from nimbus.db.migrate import alembic_config, upgrade
from nimbus.errors import Forbidden, NotFound
from nimbus.runtime.evaluation import evaluate
from nimbus.security import Principal, Role, hash_token
from nimbus.services.card_markdown import (
    as_html,
    body_html,
    card_markdown,
    datasheet_markdown,
)
from nimbus.services.cards import CardService
from nimbus.services.models import VersionRef
from nimbus.wire.cards import CardText, Datasheet, DatasheetText, ModelCard
from tests.helpers import migrated_sqlite

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
XSS_LABEL = '"><img src=x onerror=alert(1)>'
CLASSES = ["cat", "dog", XSS_LABEL]
TRAIN = {"cat": 400, "dog": 390, XSS_LABEL: 30}  # 400 / 30 >= 10: imbalanced
FAIRNESS = {
    "group_column": "region",
    "groups": {
        "north": {
            "count": 40,
            "accuracy": 0.9,
            "selection_rate": {"cat": 0.5, "dog": 0.5},
            "recall": {"cat": 0.95, "dog": 0.85},
        },
        "south": {
            "count": 30,
            "accuracy": 0.7,
            "selection_rate": {"cat": 0.3, "dog": 0.7},
            "recall": {"cat": 0.6, "dog": 0.8},
        },
    },
    "disparities": {
        "cat": {"demographic_parity_difference": 0.2, "equalized_odds_difference": 0.35},
        "dog": {"demographic_parity_difference": 0.2, "equalized_odds_difference": 0.05},
    },
}


PRIVACY = {"epsilon": 7.98, "delta": 1e-5, "max_grad_norm": 1.0, "noise_multiplier": 0.83}


def job_evaluation(fairness: bool = False, privacy: bool = False) -> dict[str, Any]:
    """A real evaluation of 70 test predictions: the third class is mostly missed."""
    rng = np.random.default_rng(0)
    truth = np.array([0] * 30 + [1] * 30 + [2] * 10)
    pred = truth.copy()
    pred[:3] = 1  # cat recall 0.9
    pred[60:68] = 0  # third class recall 0.2
    probabilities = np.full((70, 3), 0.05)
    probabilities[np.arange(70), pred] = 0.9
    probabilities += rng.uniform(0, 0.01, probabilities.shape)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    result = evaluate(truth, pred, CLASSES, probabilities)
    if fairness:
        result["fairness"] = FAIRNESS
    if privacy:
        result["privacy"] = PRIVACY
    return result


@pytest.fixture
def both(migrated_url: str) -> Iterator[Database]:
    """Either metadata store (for what the migration and the repository write)."""
    database = Database(migrated_url)
    yield database
    database.dispose()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Database]:
    """SQLite: generation and rendering do not depend on the store."""
    database = Database(migrated_sqlite(tmp_path / "nimbus.db"))
    yield database
    database.dispose()


def seed(db: Database, *, fairness: bool = False, privacy: bool = False) -> Principal:
    """A tenant with a token, a dataset version and a model version trained on it."""
    with db.session(write=True) as session:
        tenant = tenants.get_or_create(session, "acme")
        tokens.create(
            session,
            token_id="tok_alice",
            tenant_id=tenant.id,
            name="alice",
            role="member",
            token_hash=hash_token("secret"),
            created_by=None,
            expires_at=None,
        )
        dataset = dataset_repo.get_or_create_dataset(session, tenant.id, "pets")
        splits = {
            "train": {"size": sum(TRAIN.values()), "per_class": TRAIN},
            "test": {"size": 70, "per_class": {"cat": 30, "dog": 30, XSS_LABEL: 10}},
        }
        dataset_repo.create_version(
            session,
            dataset_id=dataset.id,
            version=dataset_repo.allocate_version_number(session, dataset),
            content_hash="c" * 64,
            source_hash="s" * 64,
            task="image-classification",
            format="image-folder",
            size_bytes=12345,
            info={
                "classes": CLASSES,
                "splits": splits,
                "schema": {"shape": [6, 6, 1]},
                "split_source": "seeded",
                "options": {"seed": 3, "val_fraction": 0.1, "test_fraction": 0.1},
            },
            files={"source": {"key": "sha256/aa/" + "a" * 64, "size": 12345, "name": "pets.zip"}},
            created_by="tok_alice",
            created_at=NOW,
        )
        model = repo.get_or_create_model(session, tenant.id, "pet", NOW)
        repo.create_version(
            session,
            model_id=model.id,
            version=repo.allocate_version_number(session, model),
            job_id="job1",
            spec={"task": "image-classification", "architecture": "cnn", "classes": CLASSES},
            files={},
            created_at=NOW,
            created_by="tok_alice",
            card={"description": "Tells <script>alert(1)</script> pets apart."},
            dataset={"name": "pets", "version": 1, "content_hash": "c" * 64},
            code_hash=None,
            params={"epochs": 3},
            seed=7,
            metrics=job_evaluation(fairness, privacy),
        )
        tenant_id = tenant.id
    return Principal(tenant_id, "acme", "tok_alice", "alice", Role.MEMBER)


def test_the_card_follows_the_job_evaluation_and_the_dataset(store: Database) -> None:
    who = seed(store)
    card = CardService(store).model_card(who, "pet", VersionRef(version=1))
    evaluation = job_evaluation()
    d = card.model_details
    assert (d.name, d.version, d.architecture, d.task, d.seed) == (
        "pet",
        1,
        "cnn",
        "image-classification",
        7,
    )
    assert d.dataset.content_hash == "c" * 64 and d.params == {"epochs": 3}
    assert d.registered_by.name == "alice" and d.registered_at == NOW
    assert card.training_data.available
    assert card.training_data.splits["train"].per_class == TRAIN
    ev = card.evaluation
    assert ev.overall["accuracy"] == evaluation["accuracy"] and ev.support == 70
    assert ev.confusion_matrix == evaluation["confusion_matrix"]
    assert ev.per_class["dog"].recall == evaluation["per_class"]["dog"]["recall"]
    assert ev.calibration is not None
    assert ev.calibration.ece == evaluation["calibration"]["ece"]
    assert sum(b.count for b in ev.calibration.bins) == 70
    flags = {f.kind: f for f in card.limitations.flags}
    assert set(flags) == {"low_recall", "small_test_set", "class_imbalance"}
    assert flags["low_recall"].detail["class"] == XSS_LABEL  # recall 0.2, mean ~0.7
    assert flags["small_test_set"].detail["test_examples"] == 70
    assert flags["class_imbalance"].detail["smallest"] == {"class": XSS_LABEL, "count": 30}
    assert card.description == "Tells <script>alert(1)</script> pets apart."
    assert not card.fairness.declared and card.privacy is None
    assert ModelCard.model_validate_json(card.model_dump_json()) == card  # stable JSON
    assert "Trained without differential privacy." in card_markdown(card)


def test_a_privately_trained_model_says_so(store: Database) -> None:
    who = seed(store, privacy=True)
    card = CardService(store).model_card(who, "pet", VersionRef(version=1))
    assert card.privacy is not None and card.privacy.epsilon == 7.98
    text = card_markdown(card)
    assert "Trained with differential privacy (DP-SGD): ε = 7.980 spent" in text
    assert "noise multiplier 0.830" in text


def test_editing_the_text_keeps_what_is_not_given(both: Database) -> None:
    store = both
    who = seed(store)
    later = datetime(2026, 12, 4, tzinfo=UTC)
    service = CardService(store, clock=lambda: later)
    edit = CardText.model_validate({"intended_use": "Sorting pet photos.", "limitations": "Cats"})
    card = service.edit(who, "pet", VersionRef(), edit)
    assert (card.description or "").startswith("Tells")
    assert card.intended_use == "Sorting pet photos."
    assert card.limitations.text == "Cats"
    assert card.text_updated_at == later and card.text_updated_by is not None
    assert card.text_updated_by.name == "alice"
    cleared = service.edit(who, "pet", VersionRef(), CardText.model_validate({"limitations": ""}))
    assert cleared.limitations.text is None and cleared.intended_use == "Sorting pet photos."
    assert service.model_card(who, "pet", VersionRef(version=1)) == cleared  # stored
    viewer = Principal(who.tenant_id, "acme", "tok_v", "v", Role.VIEWER)
    with pytest.raises(Forbidden):
        service.edit(viewer, "pet", VersionRef(), edit)
    with pytest.raises(NotFound, match="no version 9"):
        service.model_card(who, "pet", VersionRef(version=9))
    other = Principal(who.tenant_id + 100, "globex", "tok_g", "g", Role.MEMBER)
    with pytest.raises(NotFound):
        service.model_card(other, "pet", VersionRef())


def test_migration_0014_goes_down_and_up(both: Database) -> None:
    store = both
    seed(store)
    config = alembic_config(store.engine)
    command.downgrade(config, "0013")
    columns = {c["name"] for c in inspect(store.engine).get_columns("model_versions")}
    assert "card" not in columns and "job_id" in columns
    upgrade(store.engine)
    columns = {c["name"] for c in inspect(store.engine).get_columns("model_versions")}
    assert "card" in columns


def test_a_gone_dataset_version_and_a_bare_evaluation(store: Database) -> None:
    who = seed(store)
    with store.session(write=True) as session:
        dataset = dataset_repo.get_dataset(session, who.tenant_id, "pets")
        assert dataset is not None
        row = dataset_repo.get_version(session, dataset.id, 1)
        assert row is not None
        dataset_repo.delete_version(session, row)
        model = repo.get_model(session, who.tenant_id, "pet")
        assert model is not None
        version = repo.get_version(session, model.id, 1)
        assert version is not None
        version.metrics = {"accuracy": 0.5, "support": 10}  # a custom script's own figures
    card = CardService(store).model_card(who, "pet", VersionRef())
    assert not card.training_data.available and not card.evaluation.available
    assert card.limitations.flags == []
    markdown = card_markdown(card)
    assert "no longer stored" in markdown and "recorded no evaluation" in markdown
    data = HubCard(markdown).data
    assert isinstance(data, ModelCardData) and data.eval_results is None


def test_markdown_parses_with_huggingface_hub(store: Database) -> None:
    who = seed(store, fairness=True)
    card = CardService(store).model_card(who, "pet", VersionRef())
    markdown = card_markdown(card)
    hub = HubCard(markdown)
    data = hub.data
    assert isinstance(data, ModelCardData)
    found = data.eval_results or []
    results = {(r.metric_type, (r.metric_args or {}).get("average")): r for r in found}
    assert results[("accuracy", None)].metric_value == card.evaluation.overall["accuracy"]
    assert results[("f1", "macro")].metric_value == card.evaluation.overall["f1_macro"]
    assert card.evaluation.calibration is not None
    assert results[("ece", None)].metric_value == card.evaluation.calibration.ece
    first = found[0]
    assert (first.task_type, first.dataset_type, first.dataset_split) == (
        "image-classification",
        "pets",
        "test",
    )
    assert data.pipeline_tag == "image-classification" and data.datasets == ["pets"]
    for section in ("## Model details", "## Training data", "## Evaluation", "## Fairness"):
        assert section in hub.text
    # the fairness key rendered as tables, the label's '|'-free row intact
    assert "| south | 30 | 0.7000 | 0.6000 | 0.8000 | 0.3000 | 0.7000 |" in hub.text
    assert "| cat | 0.2000 | 0.3500 |" in hub.text
    assert card.fairness.declared and card.fairness.group_column == "region"


def test_html_shows_scripts_and_attributes_as_text(store: Database) -> None:
    who = seed(store)
    card = CardService(store).model_card(who, "pet", VersionRef())
    page = as_html(card_markdown(card), "Model card for pet:1")
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<table>" in page  # tables are rendered, not shown as pipes
    body = body_html(card_markdown(card), heading_offset=2)  # under a console page's headings
    assert "<h3>Model card for pet:1</h3>" in body and "<h1>" not in body and "<h4>" in body
    assert "<script>" not in body and "<img" not in body and "<html>" not in body
    # a link a person wrote cannot run script either
    hostile = "[click](javascript:alert(1)) <b onmouseover=x>hi</b>"
    rendered = as_html(hostile, '<title>"')
    assert "href" not in rendered and "<b " not in rendered  # the link stays text
    assert "<title>&lt;title&gt;&quot;</title>" in rendered
    assert MarkdownIt("commonmark").options["html"]  # the default would pass HTML through


def test_datasheet(store: Database) -> None:
    who = seed(store)
    sheet = CardService(store).datasheet(who, "pets", None)
    assert sheet.source.file_name == "pets.zip" and sheet.source.size_bytes == 12345
    assert sheet.per_class == {"cat": 430, "dog": 420, XSS_LABEL: 40}
    assert sheet.examples == 890 and sheet.uploaded_by.name == "alice"
    assert sheet.split_method.stratified and sheet.split_method.seed == 3
    assert sheet.data_schema == {"shape": [6, 6, 1]}
    markdown = datasheet_markdown(sheet)
    assert "pets.zip" in markdown and "Stratified by class with seed 3" in markdown
    assert "| cat | 430 | 400 | 30 |" in markdown
    assert HubCard(markdown).data.to_dict()["task_categories"] == ["image-classification"]
    with pytest.raises(NotFound, match="no version 4"):
        CardService(store).datasheet(who, "pets", 4)


def test_a_datasheet_carries_and_edits_what_a_person_wrote(both: Database) -> None:
    """The datasheet's text (Gebru et al.'s sections) is stored in either metadata store,
    kept where an edit does not give it, cleared by "", shown in the Markdown; a viewer
    cannot edit it."""
    store = both
    who = seed(store)
    later = datetime(2026, 12, 4, tzinfo=UTC)
    service = CardService(store, clock=lambda: later)
    untouched = service.datasheet(who, "pets", 1)
    assert untouched.motivation is None and untouched.text_updated_by is None
    assert "## Motivation\n\n_Not stated._" in datasheet_markdown(untouched)
    text = {
        "motivation": "Sorting a shelter's photos.",
        "composition": f"One pet a photo; {XSS_LABEL} are rare.",
        "collection_process": "Phone photos, 2025, labelled by two volunteers.",
        "uses": "Not for breed identification.",
        "license": "CC BY 4.0",
    }
    sheet = service.edit_datasheet(who, "pets", None, DatasheetText.model_validate(text))
    assert {f: getattr(sheet, f) for f in text} == text
    assert sheet.text_updated_at == later and sheet.text_updated_by is not None
    assert sheet.text_updated_by.name == "alice"
    markdown = datasheet_markdown(sheet)
    for heading, value in (
        ("## Motivation", text["motivation"]),
        ("## Collection process", text["collection_process"]),
        ("## Uses", text["uses"]),
        ("## Distribution", f"License: {text['license']}"),
    ):
        assert f"{heading}\n\n{value}" in markdown
    assert text["composition"] in markdown and "## Datasheet authors" in markdown
    page = as_html(markdown, "sheet")
    assert "<img" not in page and "are rare" in page  # a person's text shows as text
    cleared = service.edit_datasheet(who, "pets", 1, DatasheetText.model_validate({"uses": ""}))
    assert cleared.uses is None and cleared.license == "CC BY 4.0"
    assert service.datasheet(who, "pets", 1) == cleared  # stored
    assert Datasheet.model_validate_json(cleared.model_dump_json()) == cleared  # stable JSON
    viewer = Principal(who.tenant_id, "acme", "tok_v", "v", Role.VIEWER)
    with pytest.raises(Forbidden):
        service.edit_datasheet(viewer, "pets", 1, DatasheetText(uses="x"))
    with pytest.raises(NotFound, match="no version 4"):
        service.edit_datasheet(who, "pets", 4, DatasheetText(uses="x"))
    config = alembic_config(store.engine)  # migration 0021 goes down and up
    command.downgrade(config, "0020")
    columns = {c["name"] for c in inspect(store.engine).get_columns("dataset_versions")}
    assert "datasheet" not in columns and "info" in columns
    upgrade(store.engine)
    assert service.datasheet(who, "pets", 1).license is None  # the text went with the column


@pytest.mark.parametrize(
    "metrics",
    [
        {"per_class": {"cat": "high"}, "support": 3},
        {"per_class": {}, "confusion_matrix": "none", "support": 3},
        {"per_class": {}, "calibration": {"ece": "low"}},
        {"accuracy": 1.0, "per_class": {}, "fairness": {"groups": [1, 2]}},
        {"accuracy": 1.0, "per_class": {}, "fairness": {"groups": {"a": {"recall": [0.5]}}}},
    ],
)
def test_an_evaluation_a_script_made_up_does_not_break_the_card(
    store: Database, metrics: dict[str, Any]
) -> None:
    """A job's script reports its own results: what does not fit is left out, never a 500."""
    who = seed(store)
    with store.session(write=True) as session:
        model = repo.get_model(session, who.tenant_id, "pet")
        assert model is not None
        version = repo.get_version(session, model.id, 1)
        assert version is not None
        version.metrics = metrics
    card = CardService(store).model_card(who, "pet", VersionRef())
    assert not card.fairness.declared
    assert card.evaluation.available == (metrics.get("accuracy") == 1.0)
    assert "<h2>Evaluation</h2>" in as_html(card_markdown(card), "card")
