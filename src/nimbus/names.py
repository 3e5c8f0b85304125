"""Names and references: the one rule for resource names and the one parser of references.

A resource name (dataset, model, deployment, token, alias) matches
``^[a-z0-9][a-z0-9._-]{0,62}$``. A dataset reference is ``NAME`` (the latest version),
``NAME:VERSION`` or ``NAME:latest``; a model reference may also be ``NAME@ALIAS``. The SDK
checks references before it sends them and the server checks them again with the same
functions, so both refuse a bad one with the same message.

A number written in text (a version, a path or query value, a header, a CLI argument) is
read by :func:`parse_int` (or :func:`whole_number`, which answers None): ASCII digits only,
within bounds. ``str.isdigit()`` is not that rule: it accepts ``'²'``, which ``int()``
refuses (a 500 where a 400 belongs), and ``int()`` alone accepts other scripts' digits,
``' 7'`` and ``'1_000'``.

This is a bottom module: it imports nothing of Nimbus but :mod:`nimbus.errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from nimbus.errors import InvalidInput

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LATEST: Final = "latest"
MAX_VERSION: Final = 999_999_999
# The largest value a metadata-store integer column (and SQLite's) holds.
MAX_INT64: Final = 2**63 - 1

Version = int | Literal["latest"] | None


def validate_name(name: str, what: str = "name") -> str:
    """Names match ``^[a-z0-9][a-z0-9._-]{0,62}$``; anything else is a 400."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}..."
        raise InvalidInput(
            f"invalid {what} {shown!r}: use 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_alias(alias: str) -> str:
    """An alias is a name that is neither all digits nor ``latest`` (those are versions)."""
    validate_name(alias, "alias")
    if is_digits(alias) or alias == LATEST:
        raise InvalidInput(f"invalid alias {alias!r}: an alias is neither a number nor 'latest'")
    return alias


def is_digits(text: object) -> bool:
    """Whether ``text`` is one or more ASCII digits (``0``-``9``) and nothing else."""
    return isinstance(text, str) and text.isascii() and text.isdigit()


def whole_number(text: str, *, minimum: int = 0, maximum: int = MAX_INT64) -> int | None:
    """``text`` as an integer from ``minimum`` to ``maximum`` written in ASCII digits (a
    leading ``-`` only where ``minimum`` is negative), or None if it is not one. Nothing
    else passes: no spaces, ``+``, underscores or other scripts' digits."""
    if not isinstance(text, str):
        return None
    digits = text[1:] if text.startswith("-") and minimum < 0 else text
    # Past 19 digits the value is out of any bound here; int() would also do quadratic work.
    if not is_digits(digits) or len(digits.lstrip("0")) > 19:
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


def parse_int(text: str, what: str, *, minimum: int = 0, maximum: int = MAX_INT64) -> int:
    """``text`` as :func:`whole_number` reads it; anything else is an
    :class:`~nimbus.errors.InvalidInput` (a 400) naming ``what`` (``"query parameter
    'after'"``, ``"Content-Length header"``) and the accepted range."""
    value = whole_number(text, minimum=minimum, maximum=maximum)
    if value is None:
        shown = text if isinstance(text, str) and len(text) <= 40 else f"{str(text)[:40]}..."
        raise InvalidInput(
            f"invalid {what} {shown!r}: a whole number from {minimum} to {maximum}", field=what
        )
    return value


def version_number(text: str) -> int | None:
    """``text`` as a version number (1 to 999,999,999), or None if it is not one."""
    return whole_number(text, minimum=1, maximum=MAX_VERSION)


@dataclass(frozen=True)
class Reference:
    """A parsed reference: ``version`` None means the latest (as does ``"latest"``, which
    records that the reference said so); ``alias`` is set only for ``NAME@ALIAS``."""

    name: str
    version: Version = None
    alias: str | None = None


def reference_usage(aliases: bool) -> str:
    """The accepted forms, as error messages name them."""
    return "use NAME, NAME:VERSION or NAME@ALIAS" if aliases else "use NAME or NAME:VERSION"


def parse_reference(ref: str, kind: str, *, aliases: bool = False) -> Reference:
    """Parse ``NAME``, ``NAME:VERSION``, ``NAME:latest`` (and ``NAME@ALIAS`` when
    ``aliases``). ``kind`` ("dataset", "model") names the thing in error messages; every
    refusal is an :class:`~nimbus.errors.InvalidInput` (a 400, exit code 2)."""
    if not isinstance(ref, str):
        raise InvalidInput(f"invalid {kind} reference {ref!r}: {reference_usage(aliases)}")
    if aliases and "@" in ref:
        name, _, alias = ref.partition("@")
        return Reference(validate_name(name, f"{kind} name"), alias=validate_alias(alias))
    name, sep, version = ref.partition(":")
    validate_name(name, f"{kind} name")
    if not sep:
        return Reference(name)
    if version == LATEST:
        return Reference(name, LATEST)
    number = version_number(version)
    if number is None:
        shown = ref if len(ref) <= 100 else f"{ref[:100]}..."
        raise InvalidInput(
            f"invalid {kind} reference {shown!r}: the version is a positive integer or "
            f"'latest'; {reference_usage(aliases)}"
        )
    return Reference(name, number)
