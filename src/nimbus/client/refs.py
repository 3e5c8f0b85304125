"""Parsing ``NAME[:VERSION]`` references, shared by dataset and model references."""

from __future__ import annotations

from typing import Literal

from nimbus.datasets.domain import validate_name
from nimbus.errors import InvalidInput

Version = int | Literal["latest"] | None


def parse_versioned(ref: str, what: str, usage: str) -> tuple[str, Version]:
    """``NAME`` → (name, None); ``NAME:latest`` → (name, "latest"); ``NAME:3`` → (name, 3).

    ``what`` names the kind of thing ("dataset", "model") and ``usage`` says which forms are
    accepted, for the error message.
    """
    name, sep, version = ref.partition(":")
    validate_name(name, f"{what} name")
    if not sep:
        return name, None
    if version == "latest":
        return name, "latest"
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput(f"invalid {what} reference {ref!r}: {usage}")
    return name, int(version)
