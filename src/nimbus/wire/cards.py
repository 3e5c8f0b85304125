"""Model cards and datasheets on the wire (docs/model-format.md, "Model cards").

A model version's card is generated when it is read, from what Nimbus knows (the version's
lineage, the job's evaluation, the dataset version's counts), plus what a person wrote
(:class:`CardText`). A dataset version's datasheet is generated the same way. Both JSON forms
are stable: fields may be added, none renamed or removed (``format_version`` changes if they
ever must).
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from nimbus.wire.base import Request, Response, Timestamp

MAX_CARD_TEXT = 20_000  # characters per field
MAX_LICENSE_TEXT = 2_000  # a datasheet's licence: a name or a few lines of terms


class CardText(Request):
    """What only a person knows about a model version. In ``PATCH .../card`` a field left out
    is kept, and ``null`` or ``""`` clears it; in ``POST /models/{name}/versions`` it is the
    text the new version starts with."""

    description: str | None = Field(default=None, max_length=MAX_CARD_TEXT)
    intended_use: str | None = Field(default=None, max_length=MAX_CARD_TEXT)
    limitations: str | None = Field(default=None, max_length=MAX_CARD_TEXT)
    ethical_considerations: str | None = Field(default=None, max_length=MAX_CARD_TEXT)


class DatasheetText(Request):
    """What only a person knows about a dataset version, after the sections of Gebru et
    al.'s *Datasheets for Datasets* (2018/2021). In ``PATCH .../datasheet`` a field left out
    is kept, and ``null`` or ``""`` clears it."""

    motivation: str | None = Field(
        default=None,
        max_length=MAX_CARD_TEXT,
        description="Why the dataset was made, by whom, for what task.",
    )
    composition: str | None = Field(
        default=None,
        max_length=MAX_CARD_TEXT,
        description="What an example is; what is missing, noisy or sensitive in it.",
    )
    collection_process: str | None = Field(
        default=None,
        max_length=MAX_CARD_TEXT,
        description="How the data was collected, sampled and labelled, and when.",
    )
    uses: str | None = Field(
        default=None,
        max_length=MAX_CARD_TEXT,
        description="What it may be used for, and what it should not be.",
    )
    license: str | None = Field(
        default=None,
        max_length=MAX_LICENSE_TEXT,
        description="Its licence and terms of use (Distribution).",
    )


class Person(Response):
    """Who did something: the token's id and, while the token exists, its name."""

    token: str | None
    name: str | None = None


class CardDataset(Response):
    """The dataset version a model was trained on (unknown parts null)."""

    name: str | None
    version: int | None
    content_hash: str | None


class ModelDetails(Response):
    """Section "Model details" (Mitchell et al., 2019)."""

    name: str
    version: int
    aliases: list[str]
    task: str | None
    architecture: str | None
    classes: list[str]
    job: str | None = Field(description="The job that trained it; null when imported.")
    dataset: CardDataset
    code_hash: str | None = Field(description="sha256 of the training code; null for built-ins.")
    params: dict[str, Any]
    seed: int | None
    registered_at: Timestamp
    registered_by: Person
    lineage: str = Field(
        default="trained", description="trained (by a Nimbus job) or imported (an ONNX file)."
    )


class ImportRecord(Response):
    """Section "Import": a model trained elsewhere, what Nimbus checked of its file."""

    file_name: str | None
    sha256: str | None
    size_bytes: int | None
    producer: str | None = Field(description="The ONNX producer the file names.")
    ir_version: int | None
    opsets: dict[str, int]
    checks: list[str] = Field(description="What was checked before it was registered.")
    evaluation: str = Field(description="Why the card holds no evaluation.")


class SplitCounts(Response):
    size: int
    per_class: dict[str, int]


class TrainingData(Response):
    """Section "Training data": the dataset version's splits and per-class counts; ``splits``
    is empty when the dataset version is gone (``available`` false)."""

    available: bool
    dataset: CardDataset
    format: str | None = None
    split_source: str | None = Field(
        default=None, description="'seeded' (stratified by class) or 'given' by the data."
    )
    splits: dict[str, SplitCounts] = Field(default_factory=dict)


class ClassMetrics(Response):
    precision: float
    recall: float
    f1: float
    support: int


class ReliabilityBin(Response):
    """One confidence interval ``(low, high]`` of the reliability table; confidence and
    accuracy are null when no example fell in it."""

    low: float
    high: float
    count: int
    confidence: float | None
    accuracy: float | None


class Calibration(Response):
    ece: float = Field(description="Expected calibration error over the bins.")
    bins: list[ReliabilityBin]


class Evaluation(Response):
    """Section "Evaluation": the job's scores on its test split (``available`` false when
    the job recorded none)."""

    available: bool
    split: str = "test"
    support: int | None = None
    overall: dict[str, float] = Field(
        default_factory=dict,
        description="accuracy and macro/weighted precision, recall and F1.",
    )
    per_class: dict[str, ClassMetrics] = Field(default_factory=dict)
    classes: list[str] = Field(default_factory=list)
    confusion_matrix: list[list[int]] = Field(
        default_factory=list, description="[true class][predicted class], in `classes` order."
    )
    calibration: Calibration | None = None


class LimitationFlag(Response):
    """A limitation found automatically: ``kind`` is low_recall, small_test_set or
    class_imbalance; ``detail`` holds the figures behind it."""

    kind: str
    message: str
    detail: dict[str, Any]


class Limitations(Response):
    flags: list[LimitationFlag]
    thresholds: dict[str, float] = Field(description="What each automatic flag compares.")
    text: str | None = Field(description="What a person wrote.")


class FairnessGroup(Response):
    """The figures of one group of the sensitive attribute (per class: recall and the
    share of the group predicted as that class)."""

    count: int | None = None
    accuracy: float | None = None
    selection_rate: dict[str, float | None] = Field(default_factory=dict)
    recall: dict[str, float | None] = Field(default_factory=dict)


class Fairness(Response):
    """Section "Fairness": per-group metrics and disparities (per class:
    ``demographic_parity_difference``, ``equalized_odds_difference``) from the job's
    evaluation; ``declared`` false when the dataset declared no sensitive attribute."""

    declared: bool
    group_column: str | None = None
    groups: dict[str, FairnessGroup] = Field(default_factory=dict)
    disparities: dict[str, dict[str, float | None]] = Field(default_factory=dict)


class Privacy(Response):
    """How the model was trained with differential privacy (DP-SGD), when it was: the ε
    its whole run spent, δ, the per-example gradient clip and the noise multiplier."""

    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float


class ModelCard(Response):
    """``GET /models/{name}/versions/{v}/card`` (``format=json``)."""

    format_version: int = 1
    model_details: ModelDetails
    description: str | None
    intended_use: str | None
    training_data: TrainingData
    evaluation: Evaluation
    limitations: Limitations
    ethical_considerations: str | None
    fairness: Fairness
    privacy: Privacy | None = Field(
        default=None, description="Set when the model was trained with DP-SGD."
    )
    text_updated_at: Timestamp | None = Field(description="When a person last edited the text.")
    text_updated_by: Person | None
    imported: ImportRecord | None = Field(
        default=None, description="Set when the version was imported from an ONNX file."
    )


class DatasheetSource(Response):
    file_name: str | None
    format: str
    size_bytes: int
    source_hash: str


class SplitMethod(Response):
    """How the splits were made: ``source`` 'seeded' (stratified per class with ``seed``
    and the fractions) or 'given' (the data's own test split)."""

    source: str | None
    stratified: bool
    seed: int | None
    val_fraction: float | None
    test_fraction: float | None


class Datasheet(Response):
    """``GET /datasets/{name}/versions/{v}/datasheet`` (``format=json``), after Gebru et
    al. (2018)."""

    # "schema" would shadow BaseModel.schema(): see wire.datasets.DatasetVersion.
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)

    format_version: int = 1
    dataset: str
    version: int
    task: str
    content_hash: str
    source: DatasheetSource
    classes: list[str]
    per_class: dict[str, int] = Field(description="Examples per class over every split.")
    examples: int
    splits: dict[str, SplitCounts]
    split_method: SplitMethod
    data_schema: dict[str, Any] = Field(alias="schema")
    uploaded_at: Timestamp
    uploaded_by: Person
    # What a person wrote (DatasheetText), null where nothing was.
    motivation: str | None = None
    composition: str | None = Field(
        default=None, description="A person's account; the counts are in per_class and splits."
    )
    collection_process: str | None = None
    uses: str | None = None
    license: str | None = None
    text_updated_at: Timestamp | None = Field(
        default=None, description="When a person last edited the text."
    )
    text_updated_by: Person | None = None
