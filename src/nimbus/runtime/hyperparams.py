"""Hyper-parameters of the built-in models: schemas and one pure validation function.

``nimbus train --param k=v`` hands every value over as a string; :func:`validate_params`
coerces them ("0.01" -> 0.01, "64,32" -> [64, 32]), fills in the defaults and refuses
unknown keys, wrong types, out-of-range values and a model that does not fit the
dataset's task, always with an :class:`~nimbus.errors.InvalidInput` naming the key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput
from nimbus.jobs.domain import parse_duration
from nimbus.modelformat.text import MAX_NGRAMS, TOKEN_PATTERN, WORD_PATTERN
from nimbus.names import validate_name

Optimizer = Literal["adam", "sgd", "adamw"]
Tokenizer = Literal["words", "alnum"]
Monitor = Literal["val_accuracy", "val_loss"]
TOKEN_PATTERNS: dict[str, str] = {"words": WORD_PATTERN, "alnum": TOKEN_PATTERN}


class CommonParams(BaseModel):
    """Keys every built-in model accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: int = Field(5, ge=1, le=10_000, description="passes over the train split")
    batch_size: int = Field(64, ge=1, le=65_536, description="global batch, all workers")
    lr: float = Field(1e-3, gt=0, le=10, description="learning rate")
    optimizer: Optimizer = Field("adam", description="adam, sgd (with momentum) or adamw")
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="used by sgd only")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    patience: int = Field(
        3, ge=0, le=10_000, description="stop after this many epochs without a better val score"
    )
    monitor: Monitor = Field(
        "val_accuracy", description="val_accuracy (val_loss breaks ties) or val_loss"
    )
    # Differentially private training (runtime/privacy.py): set only when asked for.
    dp_epsilon: float | None = Field(
        None, gt=0, le=1000, description="train with DP-SGD within this privacy budget ε"
    )
    dp_delta: float | None = Field(None, gt=0, lt=1, description="DP-SGD's δ (default 1e-5)")
    dp_max_grad_norm: float | None = Field(
        None, gt=0, le=1000, description="DP-SGD's per-example gradient clip (default 1.0)"
    )

    @model_validator(mode="after")
    def _dp_together(self) -> CommonParams:
        if self.dp_epsilon is None and (
            self.dp_delta is not None or self.dp_max_grad_norm is not None
        ):
            raise ValueError("dp_delta and dp_max_grad_norm need dp_epsilon")
        return self

    @field_validator("optimizer", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class CnnParams(CommonParams):
    """The image CNN: one convolution, one hidden dense layer."""

    conv_channels: int = Field(32, ge=1, le=1024)
    hidden: int = Field(128, ge=1, le=16_384)


class TextParams(CommonParams):
    """The text classifier: mean of word and n-gram embeddings, then a linear layer.

    Its defaults were chosen on real text (bench/text_quality.py); the seed's model is
    ``ngrams=1 tokenizer=alnum max_len=64 embed_dim=64 min_freq=1 epochs=5 lr=0.001
    batch_size=64 patience=0``.
    """

    epochs: int = Field(30, ge=1, le=10_000, description="at most; early stopping ends sooner")
    batch_size: int = Field(128, ge=1, le=65_536, description="global batch, all workers")
    lr: float = Field(0.03, gt=0, le=10, description="learning rate")
    embed_dim: int = Field(16, ge=1, le=4096)
    max_len: int = Field(256, ge=1, le=8192, description="tokens and n-grams kept per example")
    min_freq: int = Field(2, ge=1, description="rarer train tokens become <unk>")
    max_vocab: int = Field(20_000, ge=3, le=2_000_000, description="specials included")
    ngrams: int = Field(2, ge=1, le=MAX_NGRAMS, description="1: words only; 2: + bigrams")
    tokenizer: Tokenizer = Field(
        "words", description="words (punctuation marks as tokens) or alnum (the seed's)"
    )


class MlpParams(CommonParams):
    """The tabular MLP on standardised features."""

    epochs: int = Field(50, ge=1, le=10_000, description="at most; early stopping ends sooner")
    hidden: list[int] = Field(default_factory=lambda: [128, 64], min_length=1, max_length=32)
    dropout: float = Field(0.1, ge=0, lt=1)

    @field_validator("hidden", mode="before")
    @classmethod
    def _widths(cls, value: Any) -> Any:
        # CLI forms: "128", "128,64", "[128, 64]"; an int means one hidden layer.
        if isinstance(value, str):
            parts = [p.strip() for p in value.strip().strip("[]").split(",") if p.strip()]
            return parts
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        return value

    @field_validator("hidden")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(w < 1 or w > 16_384 for w in value):
            raise ValueError("every hidden width must be between 1 and 16384")
        return value


PARAM_SCHEMAS: dict[str, type[CommonParams]] = {
    "cnn": CnnParams,
    "text": TextParams,
    "mlp": MlpParams,
}
MODEL_TASKS: dict[str, Task] = {"cnn": Task.IMAGE, "text": Task.TEXT, "mlp": Task.TABULAR}


def param_schema(model: str) -> type[CommonParams]:
    """The pydantic schema of a built-in model's parameters."""
    try:
        return PARAM_SCHEMAS[model]
    except KeyError:
        raise InvalidInput(
            f"unknown model {model!r}; the built-ins are {', '.join(PARAM_SCHEMAS)}", model=model
        ) from None


def validate_params(model: str, task: Task | str, raw: dict[str, Any]) -> dict[str, Any]:
    """Check ``raw`` hyper-parameters for ``model`` on a dataset of ``task``.

    Returns every parameter of the model, defaults filled in, as plain JSON values.
    Keys may use ``-`` for ``_`` (``batch-size``). Raises InvalidInput on an unknown
    model or key, a value of the wrong type or out of range, or a model/task mismatch.
    """
    schema = param_schema(model)
    try:
        task = Task(task)
    except ValueError:
        raise InvalidInput(f"unknown task {task!r}") from None
    if MODEL_TASKS[model] is not task:
        raise InvalidInput(
            f"model {model!r} trains on {MODEL_TASKS[model]} datasets, not {task}",
            model=model,
            task=str(task),
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).strip().replace("-", "_")
        if name in values:
            raise InvalidInput(f"parameter {name!r} given twice", key=name)
        if name not in schema.model_fields:
            known = ", ".join(sorted(schema.model_fields))
            raise InvalidInput(
                f"unknown parameter {name!r} for model {model!r}; known: {known}", key=name
            )
        if isinstance(value, bool):  # pydantic would quietly read True as 1
            raise InvalidInput(f"invalid parameter {name!r}: booleans are not accepted", key=name)
        values[name] = value
    try:
        # The DP keys appear only when asked for: the params of every other run stay as they
        # were (a checkpoint compares them).
        dumped = schema.model_validate(values).model_dump(mode="json")
        return {k: v for k, v in dumped.items() if not (k.startswith("dp_") and v is None)}
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across keys
            message = str(first["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"invalid parameters: {message}") from None
        name = ".".join(str(p) for p in first["loc"]) or "?"
        key = str(first["loc"][0]) if first["loc"] else "?"
        raise InvalidInput(
            f"invalid parameter {name!r} = {values.get(key)!r}: {first['msg']}", key=key
        ) from None


# -- automatic model selection (`nimbus automl`): one job of the built-in kind "automl" --

AUTOML_MODEL = "automl"
AUTOML_REGISTER = "register"  # the model name the server registers the winner under
AutomlMetric = Literal["accuracy", "macro_f1", "balanced_accuracy"]
MAX_AUTOML_BUDGET = 7 * 24 * 3600.0


class AutomlParams(BaseModel):
    """An AutoML job's parameters: how long to search, what to maximise, its seed."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    budget: float = Field(
        600.0, gt=0, le=MAX_AUTOML_BUDGET, description="seconds: 90s, 10m, 1h or a number"
    )
    metric: AutomlMetric = Field("accuracy", description="scored on the validation split")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("budget", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("booleans are not accepted")
        try:
            return parse_duration(value)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @field_validator("metric", mode="before")
    @classmethod
    def _lower_metric(cls, value: Any) -> Any:
        return value.strip().lower().replace("-", "_") if isinstance(value, str) else value


def _model_name(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(
            f"invalid parameter 'register' = {value!r}: a model name", key=AUTOML_REGISTER
        )
    try:
        return validate_name(value, "model name")
    except InvalidInput as exc:
        raise InvalidInput(
            f"invalid parameter 'register' = {value!r}: {exc.message}", key=AUTOML_REGISTER
        ) from None


def validate_automl_params(raw: dict[str, Any]) -> dict[str, Any]:
    """Check an AutoML job's parameters (any task: the search picks the families that fit
    it); every parameter, defaults filled in (``register`` only when given), the budget in
    seconds. InvalidInput names the key at fault."""
    values: dict[str, Any] = {}
    register: str | None = None
    for key, value in raw.items():
        name = str(key).strip().replace("-", "_")
        if name == AUTOML_REGISTER:  # for the server, which registers the winner under it
            register = _model_name(value)
            continue
        if name not in AutomlParams.model_fields:
            known = ", ".join(sorted([*AutomlParams.model_fields, AUTOML_REGISTER]))
            raise InvalidInput(f"unknown parameter {name!r} for automl; known: {known}", key=name)
        values[name] = value
    try:
        dumped = AutomlParams.model_validate(values).model_dump(mode="json")
        return dumped if register is None else {**dumped, AUTOML_REGISTER: register}
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else "?"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidInput(
            f"invalid parameter {key!r} = {values.get(key)!r}: {message}", key=key
        ) from None
