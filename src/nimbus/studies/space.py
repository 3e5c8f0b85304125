"""A study's search space: what each parameter of its trials may be, parsed from the CLI's
``--param k=SPEC`` words, checked against the model, and said as Optuna distributions.

Pure: no I/O, no Optuna until :func:`to_optuna` is called. A parameter is *fixed* (one value,
every trial) or searched over one of four spaces::

    uniform(a,b)        a float in [a, b]
    loguniform(a,b)     a float in [a, b], sampled on a log scale (0 < a)
    int(a,b[,log])      an integer in [a, b] (on a log scale with ``log``: 1 <= a)
    choice(x,y,...)     one of the listed values (numbers, true/false, or words)

A space for a built-in model names a parameter the model takes, of the right kind (an
integer parameter is searched with ``int``), with bounds and choices the model accepts; a
user's script takes any parameter (names as for ``--param``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nimbus.errors import InvalidInput

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

Scalar = bool | int | float | str
MAX_CHOICES = 100
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_CALL = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Fixed:
    value: Scalar


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple[Scalar, ...]


Param = Fixed | FloatRange | IntRange | Choice


@dataclass(frozen=True)
class Space:
    """Each parameter of the study, by name (``-`` in names read as ``_``)."""

    params: Mapping[str, Param]

    @property
    def searched(self) -> dict[str, FloatRange | IntRange | Choice]:
        return {k: p for k, p in self.params.items() if not isinstance(p, Fixed)}

    @property
    def fixed(self) -> dict[str, Scalar]:
        return {k: p.value for k, p in self.params.items() if isinstance(p, Fixed)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what the wire and the metadata store hold)."""
        return {name: param_to_dict(param) for name, param in self.params.items()}


def param_to_dict(param: Param) -> Any:
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, Choice):
        return {"type": "choice", "options": list(param.options)}
    kind = "int" if isinstance(param, IntRange) else "float"
    return {"type": kind, "low": param.low, "high": param.high, "log": param.log}


def space_from_dict(raw: Mapping[str, Any]) -> Space:
    """The inverse of :meth:`Space.to_dict`, checked as :func:`parse_space` checks."""
    params: dict[str, Param] = {}
    for name, value in raw.items():
        key = _key(name)
        if isinstance(value, Mapping):
            kind = value.get("type")
            if kind == "choice":
                options = value.get("options")
                if not isinstance(options, list):
                    raise InvalidInput(f"parameter {name}: a choice needs a list of options")
                param: Param = _choice(name, [_scalar(name, o) for o in options])
            elif kind in ("float", "int"):
                param = _range(
                    name, kind, value.get("low"), value.get("high"), bool(value.get("log"))
                )
            else:
                raise InvalidInput(
                    f"parameter {name}: unknown space type {kind!r} (float, int or choice)"
                )
        else:
            param = Fixed(_scalar(name, value))
        params[key] = param
    return _checked(params)


def parse_space(words: Iterable[str]) -> Space:
    """``k=SPEC`` words (the CLI's ``--param``): a space where ``SPEC`` is one, else a
    fixed value (a number, true/false, or the text as given)."""
    params: dict[str, Param] = {}
    for word in words:
        name, sep, spec = word.partition("=")
        if not sep or not name.strip():
            raise InvalidInput(f"--param {word!r}: expected NAME=VALUE or NAME=SPACE(...)")
        key = _key(name.strip())
        if key in params:
            raise InvalidInput(f"parameter {name.strip()} is given twice")
        params[key] = parse_param(name.strip(), spec.strip())
    return _checked(params)


def parse_param(name: str, spec: str) -> Param:
    """One ``SPEC``: ``uniform(a,b)``, ``loguniform(a,b)``, ``int(a,b[,log])``,
    ``choice(x,...)``, or a fixed value."""
    call = _CALL.match(spec)
    if call is None:
        return Fixed(_word(name, spec))
    kind, inner = call.group(1), call.group(2)
    args = [a.strip() for a in inner.split(",")] if inner.strip() else []
    if kind == "choice":
        return _choice(name, [_word(name, a) for a in args])
    if kind in ("uniform", "loguniform"):
        if len(args) != 2:
            raise InvalidInput(f"parameter {name}: {kind}(low,high) takes two numbers")
        return _range(name, "float", _number(name, args[0]), _number(name, args[1]), kind[0] == "l")
    if kind == "int":
        if len(args) not in (2, 3) or (len(args) == 3 and args[2] != "log"):
            raise InvalidInput(f"parameter {name}: int(low,high) or int(low,high,log)")
        return _range(name, "int", _integer(name, args[0]), _integer(name, args[1]), len(args) == 3)
    raise InvalidInput(
        f"parameter {name}: unknown distribution {kind!r} "
        "(uniform, loguniform, int or choice; or a fixed value)"
    )


def _range(name: str, kind: str, low: Any, high: Any, log: bool) -> FloatRange | IntRange:
    if kind == "int":
        low, high = _integer(name, low), _integer(name, high)
    else:
        low, high = _number(name, low), _number(name, high)
    if not low < high:
        raise InvalidInput(f"parameter {name}: low {low} is not below high {high}")
    if log and low <= 0:
        raise InvalidInput(f"parameter {name}: a log scale needs a positive low bound, not {low}")
    if kind == "int":
        return IntRange(int(low), int(high), log)
    return FloatRange(float(low), float(high), log)


def _choice(name: str, options: list[Scalar]) -> Choice:
    if not options:
        raise InvalidInput(f"parameter {name}: choice() needs at least one option")
    if len(options) > MAX_CHOICES:
        raise InvalidInput(f"parameter {name}: at most {MAX_CHOICES} options")
    unique: list[Scalar] = []
    for option in options:
        # 1, 1.0 and true are one value to Python (and to Optuna): never two options.
        if any(o == option for o in unique):
            raise InvalidInput(f"parameter {name}: option {option!r} is listed twice")
        unique.append(option)
    return Choice(tuple(unique))


def _checked(params: dict[str, Param]) -> Space:
    if not params:
        raise InvalidInput("a study needs parameters (--param NAME=SPACE)")
    if not any(not isinstance(p, Fixed) for p in params.values()):
        raise InvalidInput(
            "no parameter is searched: give at least one a space such as "
            "lr=loguniform(1e-4,1e-1), hidden=choice(64,128) or epochs=int(5,20)"
        )
    return Space(params)


def _key(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"parameter name {name!r}: letters, digits, '_' and '-', starting with a letter"
        )
    return name.replace("-", "_")


def _word(name: str, text: str) -> Scalar:
    """A value as typed: JSON's numbers and true/false, else the text itself."""
    text = text.strip()
    if not text:
        raise InvalidInput(f"parameter {name}: an empty value")
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, bool | int | float | str):
        return _finite(name, value)
    return text


def _scalar(name: str, value: Any) -> Scalar:
    if isinstance(value, bool | int | float | str):
        return _finite(name, value)
    raise InvalidInput(f"parameter {name}: {value!r} is not a number, a boolean or a string")


def _finite(name: str, value: Scalar) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"parameter {name}: {value} is not a finite number")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidInput(f"parameter {name}: {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"parameter {name}: {value!r} is not a finite number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise InvalidInput(f"parameter {name}: {value!r} is not an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"parameter {name}: {value!r} is not an integer")
    return value


# -- the model's view -------------------------------------------------------------------------


def check_for_model(space: Space, model: str) -> None:
    """Refuse a space a built-in ``model`` cannot take: a parameter it does not have, a
    float space for an integer parameter, a bound or a choice it would refuse. A script's
    parameters are its own business (any name passes)."""
    from pydantic import ValidationError

    from nimbus.runtime.hyperparams import PARAM_SCHEMAS

    schema = PARAM_SCHEMAS.get(model)
    if schema is None:
        return
    fields = schema.model_fields
    for name, param in space.params.items():
        field = fields.get(name)
        if field is None:
            raise InvalidInput(
                f"parameter {name}: the {model} model takes none such "
                f"(it takes {', '.join(sorted(fields))})"
            )
        if isinstance(param, FloatRange) and field.annotation is int:
            raise InvalidInput(
                f"parameter {name} takes integers: search it with int(low,high), not a float range"
            )
        for value in _corners(param):
            try:
                schema.model_validate({name: value})
            except ValidationError as exc:
                reason = exc.errors()[0].get("msg", "refused")
                raise InvalidInput(f"parameter {name}: {value!r} is refused: {reason}") from None


def _corners(param: Param) -> tuple[Scalar, ...]:
    """The values that bound what a trial may be given (both ends of a range)."""
    if isinstance(param, Fixed):
        return (param.value,)
    if isinstance(param, Choice):
        return param.options
    return (param.low, param.high)


# -- Optuna -----------------------------------------------------------------------------------


def to_optuna(space: Space) -> dict[str, BaseDistribution]:
    """The searched parameters as Optuna distributions (fixed ones are not sampled)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, BaseDistribution] = {}
    for name, param in space.searched.items():
        if isinstance(param, Choice):
            out[name] = CategoricalDistribution(param.options)
        elif isinstance(param, IntRange):
            out[name] = IntDistribution(param.low, param.high, log=param.log)
        else:
            out[name] = FloatDistribution(param.low, param.high, log=param.log)
    return out
