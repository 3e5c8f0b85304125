"""What a model card and a datasheet say: pure functions of what Nimbus recorded.

A card's sections follow Mitchell et al. (2019), a datasheet's Gebru et al. (2018). The
limitations found automatically, and their thresholds:

- ``low_recall``: a class whose recall on the test split is more than ``LOW_RECALL_GAP``
  below the mean recall of the classes present there;
- ``small_test_set``: fewer than ``SMALL_TEST_SET`` test examples (the figures then carry a
  wide margin: the 95% interval of the accuracy is given);
- ``class_imbalance``: the largest class of the training split holds at least
  ``IMBALANCE_RATIO`` times the examples of the smallest (the test split's counts when the
  dataset version is gone).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from nimbus.wire.base import iso
from nimbus.wire.cards import (
    Calibration,
    CardDataset,
    CardText,
    ClassMetrics,
    Datasheet,
    DatasheetSource,
    Evaluation,
    Fairness,
    ImportRecord,
    LimitationFlag,
    Limitations,
    ModelCard,
    ModelDetails,
    Person,
    Privacy,
    SplitCounts,
    SplitMethod,
    TrainingData,
)
from nimbus.wire.datasets import DatasetVersion
from nimbus.wire.models import ModelVersion

LOW_RECALL_GAP = 0.15
SMALL_TEST_SET = 100
IMBALANCE_RATIO = 10.0
THRESHOLDS = {
    "low_recall_gap": LOW_RECALL_GAP,
    "small_test_set": float(SMALL_TEST_SET),
    "class_imbalance_ratio": IMBALANCE_RATIO,
}
TEXT_FIELDS = ("description", "intended_use", "limitations", "ethical_considerations")
SHEET_FIELDS = ("motivation", "composition", "collection_process", "uses", "license")
OVERALL = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)


def model_card(
    version: ModelVersion,
    text: dict[str, Any] | None,
    dataset: DatasetVersion | None,
    people: dict[str, str],
) -> ModelCard:
    """The card of ``version``: ``text`` is what a person wrote (the stored card column),
    ``dataset`` the version it was trained on if it still exists, ``people`` token names by
    id."""
    text = text or {}
    lineage = CardDataset(
        name=version.dataset.name,
        version=version.dataset.version,
        content_hash=version.dataset.content_hash,
    )
    spec = version.spec
    details = ModelDetails(
        name=version.model,
        version=version.version,
        aliases=version.aliases,
        task=_str_or_none(spec.get("task")),
        architecture=_str_or_none(spec.get("architecture")),
        classes=[str(c) for c in spec.get("classes") or []],
        job=version.job,
        dataset=lineage,
        code_hash=version.code_hash,
        params=version.params,
        seed=version.seed,
        registered_at=version.created_at,
        registered_by=_person(version.created_by, people),
        lineage=version.lineage,
    )
    training = _training_data(lineage, dataset)
    evaluation = _evaluation(version.metrics)
    updated_by = text.get("updated_by")
    return ModelCard(
        model_details=details,
        description=_text(text, "description"),
        intended_use=_text(text, "intended_use"),
        training_data=training,
        evaluation=evaluation,
        limitations=Limitations(
            flags=limitation_flags(evaluation, training),
            thresholds=THRESHOLDS,
            text=_text(text, "limitations"),
        ),
        ethical_considerations=_text(text, "ethical_considerations"),
        fairness=_fairness((version.metrics or {}).get("fairness")),
        privacy=_privacy((version.metrics or {}).get("privacy")),
        text_updated_at=text.get("updated_at"),
        text_updated_by=_person(updated_by, people) if updated_by else None,
        imported=_import_record(spec) if version.lineage == "imported" else None,
    )


NO_EVALUATION = (
    "No evaluation exists: the model was trained outside Nimbus and imported; Nimbus has not "
    "scored it on any data. Evaluate it on data of your own before relying on it."
)


def _import_record(spec: dict[str, Any]) -> ImportRecord:
    """What the spec of an imported model records of its file and its checks."""
    record = _mapping(spec.get("imported"))
    file, opsets = _mapping(record.get("file")), _mapping(record.get("opsets"))
    size = file.get("size")
    ir = record.get("ir_version")
    return ImportRecord(
        file_name=_str_or_none(file.get("name")),
        sha256=_str_or_none(file.get("sha256")),
        size_bytes=size if isinstance(size, int) else None,
        producer=_str_or_none(record.get("producer")),
        ir_version=ir if isinstance(ir, int) else None,
        opsets={str(k): int(v) for k, v in opsets.items() if isinstance(v, int)},
        checks=[str(c) for c in record.get("checks") or []],
        evaluation=NO_EVALUATION,
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def card_text(text: CardText | None, token_id: str | None, now: datetime) -> dict[str, Any] | None:
    """What registration stores of ``text`` (the card column): None when it says nothing."""
    if text is None:
        return None
    written = {f: v for f in TEXT_FIELDS if (v := getattr(text, f))}
    if not written:
        return None
    return {**written, "updated_at": iso(now), "updated_by": token_id}


def limitation_flags(evaluation: Evaluation, training: TrainingData) -> list[LimitationFlag]:
    """The automatic limitations (module docstring) of a model so evaluated and trained."""
    flags: list[LimitationFlag] = []
    present = {k: m for k, m in evaluation.per_class.items() if m.support > 0}
    if present:
        mean = sum(m.recall for m in present.values()) / len(present)
        for name, m in present.items():
            if m.recall < mean - LOW_RECALL_GAP:
                flags.append(
                    LimitationFlag(
                        kind="low_recall",
                        message=(
                            f"class {name!r} has recall {m.recall:.3f}, far below the mean "
                            f"{mean:.3f} over classes: its examples are often missed"
                        ),
                        detail={"class": name, "recall": m.recall, "mean_recall": mean},
                    )
                )
    support = evaluation.support
    if support is not None and support < SMALL_TEST_SET:
        accuracy = evaluation.overall.get("accuracy", 0.0)
        margin = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / support)
        flags.append(
            LimitationFlag(
                kind="small_test_set",
                message=(
                    f"only {support} test examples: the accuracy's 95% interval is about "
                    f"±{margin:.3f}"
                ),
                detail={"test_examples": support, "accuracy_margin_95": margin},
            )
        )
    counts, split = _class_counts(evaluation, training)
    if len(counts) > 1:
        largest, smallest = max(counts.values()), min(counts.values())
        ratio = math.inf if smallest == 0 else largest / smallest
        if ratio >= IMBALANCE_RATIO:
            big = max(counts, key=lambda k: counts[k])
            small = min(counts, key=lambda k: counts[k])
            flags.append(
                LimitationFlag(
                    kind="class_imbalance",
                    message=(
                        f"the {split} split is strongly imbalanced: {big!r} has {largest} "
                        f"examples, {small!r} {smallest}"
                    ),
                    detail={
                        "split": split,
                        "largest": {"class": big, "count": largest},
                        "smallest": {"class": small, "count": smallest},
                        "ratio": None if math.isinf(ratio) else ratio,
                    },
                )
            )
    return flags


def datasheet(
    view: DatasetVersion,
    options: dict[str, Any],
    people: dict[str, str],
    text: dict[str, Any] | None = None,
) -> Datasheet:
    """The datasheet of a dataset version; ``options`` are the ingest options it was made
    with (stored with it), ``text`` what a person wrote (the stored datasheet column)."""
    text = text or {}
    updated_by = text.get("updated_by")
    per_class = {c: 0 for c in view.classes}
    for split in view.splits.values():
        for name, count in split.per_class.items():
            per_class[name] = per_class.get(name, 0) + count
    source = view.files.get("source")
    seeded = view.split_source == "seeded"
    return Datasheet(
        dataset=view.dataset,
        version=view.version,
        task=str(view.task),
        content_hash=view.content_hash,
        source=DatasheetSource(
            file_name=source.name if source is not None else None,
            format=str(view.format),
            size_bytes=view.size_bytes,
            source_hash=view.source_hash,
        ),
        classes=view.classes,
        per_class=per_class,
        examples=sum(s.size for s in view.splits.values()),
        splits={k: SplitCounts(size=s.size, per_class=s.per_class) for k, s in view.splits.items()},
        split_method=SplitMethod(
            source=view.split_source,
            stratified=seeded,
            seed=options.get("seed"),
            val_fraction=options.get("val_fraction"),
            test_fraction=None if not seeded else options.get("test_fraction"),
        ),
        schema=view.data_schema,
        uploaded_at=view.created_at,
        uploaded_by=_person(view.created_by, people),
        motivation=_text(text, "motivation"),
        composition=_text(text, "composition"),
        collection_process=_text(text, "collection_process"),
        uses=_text(text, "uses"),
        license=_text(text, "license"),
        text_updated_at=text.get("updated_at"),
        text_updated_by=_person(updated_by, people) if updated_by else None,
    )


def edited_text(
    stored: dict[str, Any] | None,
    fields: tuple[str, ...],
    given: dict[str, str | None],
    token_id: str | None,
    now: datetime,
) -> dict[str, Any]:
    """A card's or datasheet's stored text after an edit: each of ``given`` set (None or ""
    clears it), the other ``fields`` kept, who and when recorded."""
    kept = {f: v for f, v in (stored or {}).items() if f in fields}
    for field, value in given.items():
        if value:
            kept[field] = value
        else:
            kept.pop(field, None)
    return {**kept, "updated_at": iso(now), "updated_by": token_id}


def _training_data(lineage: CardDataset, dataset: DatasetVersion | None) -> TrainingData:
    if dataset is None:
        return TrainingData(available=False, dataset=lineage)
    return TrainingData(
        available=True,
        dataset=lineage,
        format=str(dataset.format),
        split_source=dataset.split_source,
        splits={
            k: SplitCounts(size=s.size, per_class=s.per_class) for k, s in dataset.splits.items()
        },
    )


def _evaluation(metrics: dict[str, Any] | None) -> Evaluation:
    """The evaluation section; a job's script can report what it likes, so what does not
    read as an evaluation counts as none."""
    if not metrics or not isinstance(metrics.get("per_class"), dict):
        return Evaluation(available=False)
    try:
        return _read_evaluation(metrics)
    except (ValidationError, AttributeError, TypeError):
        return Evaluation(available=False)


def _read_evaluation(metrics: dict[str, Any]) -> Evaluation:
    calibration = metrics.get("calibration")
    return Evaluation(
        available=True,
        support=metrics.get("support"),
        overall={k: metrics[k] for k in OVERALL if isinstance(metrics.get(k), int | float)},
        per_class={
            str(k): ClassMetrics.model_validate(
                {f: v.get(f) or 0 for f in ClassMetrics.model_fields}
            )
            for k, v in metrics["per_class"].items()
        },
        classes=[str(c) for c in metrics.get("classes") or metrics["per_class"]],
        confusion_matrix=metrics.get("confusion_matrix") or [],
        calibration=Calibration.model_validate(calibration) if calibration else None,
    )


def _fairness(found: Any) -> Fairness:
    """The fairness section (one that does not read as the documented format is left out)."""
    if not isinstance(found, dict) or not found.get("groups"):
        return Fairness(declared=False)
    try:
        return Fairness.model_validate(
            {
                "declared": True,
                "group_column": _str_or_none(found.get("group_column")),
                "groups": found.get("groups"),
                "disparities": found.get("disparities") or {},
            }
        )
    except ValidationError:
        return Fairness(declared=False)


def _privacy(found: Any) -> Privacy | None:
    """The DP-SGD block of the evaluation (runtime/trainer.py), if it reads as one."""
    if not isinstance(found, dict):
        return None
    try:
        return Privacy.model_validate(found)
    except ValidationError:
        return None


def _class_counts(evaluation: Evaluation, training: TrainingData) -> tuple[dict[str, int], str]:
    train = training.splits.get("train")
    if train is not None and train.per_class:
        return dict(train.per_class), "train"
    return {k: m.support for k, m in evaluation.per_class.items()}, "test"


def _person(token: str | None, people: dict[str, str]) -> Person:
    return Person(token=token, name=people.get(token) if token else None)


def _text(text: dict[str, Any], field: str) -> str | None:
    value = text.get(field)
    return value if isinstance(value, str) and value else None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
