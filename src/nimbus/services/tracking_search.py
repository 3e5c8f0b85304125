"""MLflow's search syntax for runs and experiments, as pure functions: a filter such as
``metrics.acc > 0.9 and params.lr = '0.01' and tags.team LIKE 'vis%'`` and an order such as
``metrics.acc DESC``, parsed once and applied to plain values.

Supported: clauses joined by ``and``; entities ``metrics``, ``params``, ``tags`` and
``attributes`` (``status``, ``run_name``, ``run_id``, ``user_id``, ``start_time``,
``end_time``; a bare name is an attribute); comparators ``= != > >= < <=`` (numbers for
metrics and times), ``LIKE`` and ``ILIKE`` (``%`` and ``_``) for strings. Anything else is
refused with a message naming the part not understood."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nimbus.errors import InvalidInput

_ENTITIES = {
    "metric": "metrics",
    "metrics": "metrics",
    "param": "params",
    "params": "params",
    "parameter": "params",
    "parameters": "params",
    "tag": "tags",
    "tags": "tags",
    "attribute": "attributes",
    "attributes": "attributes",
    "attr": "attributes",
    "run": "attributes",
}
_ATTRIBUTES = {
    "status": "status",
    "run_name": "run_name",
    "runname": "run_name",
    "run_id": "run_id",
    "user_id": "user_id",
    "start_time": "start_time",
    "end_time": "end_time",
    "name": "name",  # experiments
    "creation_time": "creation_time",
    "last_update_time": "last_update_time",
}
_NUMERIC_ATTRIBUTES = {"start_time", "end_time", "creation_time", "last_update_time"}
_CLAUSE = re.compile(
    r"""^\s*(?P<key>(?:[A-Za-z_]+\.)?(?:`[^`]+`|"[^"]+"|[\w.\-/ ]+?))\s*
    (?P<op>>=|<=|!=|=|>|<|\s(?:NOT\s+)?I?LIKE\s)\s*
    (?P<value>'(?:[^']|'')*'|"[^"]*"|[-+]?[\d.eE+-]+)\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Clause:
    entity: str  # metrics | params | tags | attributes
    key: str
    op: str  # = != > >= < <= LIKE ILIKE NOT LIKE NOT ILIKE
    value: str | float


@dataclass(frozen=True)
class Order:
    entity: str
    key: str
    descending: bool


@dataclass
class Searchable:
    """What a filter or an order reads of one run (or experiment)."""

    attributes: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def get(self, entity: str, key: str) -> Any:
        values: Mapping[str, Any] = getattr(self, entity)
        return values.get(key)


def _split_outside_quotes(text: str, pattern: re.Pattern[str]) -> list[str]:
    parts, start, quote = [], 0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        else:
            found = pattern.match(text, i)
            if found is not None:
                parts.append(text[start:i])
                start = i = found.end()
                continue
        i += 1
    parts.append(text[start:])
    return parts


def _key(raw: str, default_entity: str) -> tuple[str, str]:
    raw = raw.strip()
    entity = default_entity
    head, dot, rest = raw.partition(".")
    if dot and head.lower() in _ENTITIES:
        entity, raw = _ENTITIES[head.lower()], rest
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in '`"':
        raw = raw[1:-1]
    if entity == "attributes":
        attribute = _ATTRIBUTES.get(raw.lower())
        if attribute is None:
            raise InvalidInput(
                f"unknown attribute {raw!r} in the search: use one of "
                f"{', '.join(sorted(set(_ATTRIBUTES.values())))}, or metrics./params./tags."
            )
        raw = attribute
    return entity, raw


def parse_filter(text: str | None, default_entity: str = "attributes") -> list[Clause]:
    """The clauses of a filter string (none for an empty one); 400 on what is not understood."""
    if text is None or not text.strip():
        return []
    clauses = []
    for part in _split_outside_quotes(text.strip(), _AND):
        found = _CLAUSE.match(part)
        if found is None:
            raise InvalidInput(
                f"cannot read the search filter clause {part.strip()[:200]!r}: write "
                "ENTITY.KEY OP VALUE, e.g. metrics.acc > 0.9 or params.lr = '0.01'"
            )
        entity, key = _key(found["key"], default_entity)
        op = " ".join(found["op"].upper().split())
        raw = found["value"]
        value: str | float
        if raw[0] in "'\"":
            value = raw[1:-1].replace("''", "'")
        else:
            try:
                value = float(raw)
            except ValueError:
                raise InvalidInput(f"invalid number {raw!r} in the search filter") from None
        numeric = entity == "metrics" or key in _NUMERIC_ATTRIBUTES
        if numeric and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidInput(
                    f"{entity}.{key} is compared with a number, not {value!r}"
                ) from None
        if numeric and "LIKE" in op:
            raise InvalidInput(f"{op} compares strings; {entity}.{key} is a number")
        if not numeric and isinstance(value, float):
            raise InvalidInput(
                f"{entity}.{key} is a string: quote the value, e.g. {entity}.{key} = '{raw}'"
            )
        if not numeric and op in (">", ">=", "<", "<="):
            raise InvalidInput(f"{entity}.{key} is a string: compare it with = != LIKE or ILIKE")
        clauses.append(Clause(entity, key, op, value))
    return clauses


def _like(pattern: str, flags: int) -> re.Pattern[str]:
    body = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{body}$", flags | re.DOTALL)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
}


def matches(item: Searchable, clauses: Sequence[Clause]) -> bool:
    """Whether ``item`` satisfies every clause (a missing metric, param or tag never does)."""
    for clause in clauses:
        actual = item.get(clause.entity, clause.key)
        if actual is None:
            return False
        if "LIKE" in clause.op:
            flags = re.IGNORECASE if "ILIKE" in clause.op else 0
            hit = bool(_like(str(clause.value), flags).match(str(actual)))
            if (not hit) if not clause.op.startswith("NOT") else hit:
                return False
            continue
        if isinstance(clause.value, float):
            try:
                actual = float(actual)
            except (TypeError, ValueError):
                return False
            if math.isnan(actual):
                return False
        if not _COMPARE[clause.op](actual, clause.value):
            return False
    return True


def parse_order(items: Sequence[str] | None, default_entity: str = "attributes") -> list[Order]:
    """``order_by`` entries such as ``metrics.acc DESC`` or ``start_time``."""
    orders = []
    for text in items or ():
        words = text.strip().rsplit(None, 1)
        descending = False
        if len(words) == 2 and words[1].upper() in ("ASC", "DESC"):
            descending = words[1].upper() == "DESC"
            text = words[0]
        if not text.strip():
            raise InvalidInput("an empty order_by entry")
        entity, key = _key(text, default_entity)
        orders.append(Order(entity, key, descending))
    return orders


def sort(items: list[Any], orders: Sequence[Order], of: Callable[[Any], Searchable]) -> list[Any]:
    """``items`` sorted by each order in turn (missing values last, as MLflow)."""
    for order in reversed(orders):
        present = [i for i in items if of(i).get(order.entity, order.key) is not None]
        missing = [i for i in items if of(i).get(order.entity, order.key) is None]
        present.sort(key=lambda i: of(i).get(order.entity, order.key), reverse=order.descending)
        items = present + missing
    return items


def page(items: list[Any], max_results: int, page_token: str | None) -> tuple[list[Any], str]:
    """One page of ``items`` and the token of the next ("" at the end). The token is the
    offset, which is all a search over a sorted, filtered list needs."""
    start = 0
    if page_token:
        if not page_token.isdigit():
            raise InvalidInput(f"invalid page_token {page_token[:40]!r}")
        start = int(page_token)
    end = start + max_results
    return items[start:end], (str(end) if end < len(items) else "")
