"""Names and references: the one rule for resource names and the one parser of references.

A resource name (dataset, model, deployment, token, alias) matches
``^[a-z0-9][a-z0-9._-]{0,62}$``. A dataset reference is ``NAME`` (the latest version),
``NAME:VERSION`` or ``NAME:latest``; a model reference may also be ``NAME@ALIAS``. The SDK
checks references before it sends them and the server checks them again with the same
functions, so both refuse a bad one with the same message.

This is a bottom module: it imports nothing of Nimbus but :mod:`nimbus.errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from nimbus.errors import InvalidInput

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LATEST: Final = "latest"
_NUMBER_RE = re.compile(r"^[0-9]{1,9}$")

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
    if alias.isdigit() or alias == LATEST:
        raise InvalidInput(f"invalid alias {alias!r}: an alias is neither a number nor 'latest'")
    return alias


def version_number(text: str) -> int | None:
    """``text`` as a version number (1 to 999,999,999), or None if it is not one."""
    return int(text) if _NUMBER_RE.match(text) and int(text) > 0 else None


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
