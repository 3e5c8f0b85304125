"""A job's requirements: the packages its environment adds to the platform's (pure).

A requirement is a package name with optional extras, version specifiers and an environment
marker (``numpy>=2``, ``tomli==2.0.1``, ``rich[jupyter]~=13.0; python_version>='3.11'``).
Everything else a ``requirements.txt`` may hold is refused, each with a 400 naming the
line: options (``--index-url``, ``-e``, ``-r``, ``--hash``...), URLs and direct references
(``pkg @ https://...``), paths and archives. They would let a job pick where code comes
from, or read files of the node that builds it.

:func:`normalise` gives the list its one spelling (canonical names, sorted, no
duplicates); :func:`request_key` hashes it with the platform (what was asked), and
:func:`environment_key` hashes the list's lock with the platform: the name of the built
environment, shared by every list that resolves to the same pins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from nimbus.errors import InvalidInput

MAX_REQUIREMENTS = 200
MAX_LINE = 300
_PATH_HINTS = ("/", "\\", "./", "../", "~", "file:")
_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")


def _refuse(line: str, why: str) -> InvalidInput:
    shown = line if len(line) <= 80 else f"{line[:80]}..."
    return InvalidInput(
        f"invalid requirement {shown!r}: {why}; give a package name with version "
        "specifiers, e.g. 'tomli==2.0.1'",
        field="environment",
    )


def parse_line(line: str) -> Requirement | None:
    """One line of a requirements file: the requirement, None for a blank or a comment
    line; raises :class:`InvalidInput` for anything else."""
    text = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
    if not text:
        return None
    if len(text) > MAX_LINE:
        raise _refuse(text, f"longer than {MAX_LINE} characters")
    if text.startswith("-"):
        raise _refuse(text, "options (--index-url, -e, -r, --hash...) are not allowed")
    if "://" in text or text.startswith(_PATH_HINTS) or text.lower().endswith(_ARCHIVES):
        raise _refuse(text, "URLs, paths and archives are not allowed")
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise _refuse(text, f"not a requirement ({str(exc).splitlines()[0]})") from None
    if requirement.url is not None:
        raise _refuse(text, "direct references (NAME @ URL) are not allowed")
    return requirement


def spelled(requirement: Requirement) -> str:
    """The one spelling of a requirement: canonical name, sorted extras and specifiers."""
    extras = f"[{','.join(sorted(canonicalize_name(e) for e in requirement.extras))}]"
    specifiers = ",".join(sorted(str(s) for s in requirement.specifier))
    marker = f"; {requirement.marker}" if requirement.marker is not None else ""
    name = canonicalize_name(requirement.name)
    return f"{name}{extras if requirement.extras else ''}{specifiers}{marker}"


def normalise(lines: Iterable[str]) -> tuple[str, ...]:
    """The requirements of ``lines`` (a requirements file's, or a list), each checked
    (:func:`parse_line`), in their one spelling, sorted; a package named twice is a 400."""
    seen: dict[str, str] = {}
    for line in lines:
        if not isinstance(line, str):
            raise InvalidInput("each requirement must be a string", field="environment")
        requirement = parse_line(line)
        if requirement is None:
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            raise InvalidInput(
                f"package {name!r} is required twice ({seen[name]!r} and "
                f"{spelled(requirement)!r}): give it once",
                field="environment",
            )
        seen[name] = spelled(requirement)
        if len(seen) > MAX_REQUIREMENTS:
            raise InvalidInput(
                f"at most {MAX_REQUIREMENTS} requirements per job", field="environment"
            )
    return tuple(sorted(seen.values()))


def environment_key(lock: Sequence[str], platform: Sequence[str]) -> str:
    """The content hash naming an environment: its lock (the resolved ``NAME==VERSION``
    pins, sorted: :mod:`nimbus.jobs.envlock`) over the platform (the interpreter's version
    and the packages it already has). Two lists that resolve alike share it."""
    return _content_key("lock", lock, platform)


def request_key(requirements: Sequence[str], platform: Sequence[str]) -> str:
    """The content hash of what was asked (normalised) over the platform that resolves
    it: the key of the requested→lock map (:class:`nimbus.jobs.envlock.ResolvedLocks`)."""
    return _content_key("requirements", requirements, platform)


def _content_key(field: str, lines: Sequence[str], platform: Sequence[str]) -> str:
    """SHA-256 of ``{field: lines, "platform": platform}`` as JSON."""
    document = json.dumps({field: list(lines), "platform": list(platform)})
    return hashlib.sha256(document.encode()).hexdigest()
