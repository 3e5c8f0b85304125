"""Running a user's training script inside a job: unpack the code, run it as ``__main__``.

The code is a single ``.py`` file, a notebook (``.ipynb``: run by
:mod:`nimbus.runtime.notebook`, not here) or a tar archive of a directory with its entry script
(``main.py`` unless the upload named another). It runs through :mod:`runpy` in this
process, with ``sys.argv`` and ``sys.path`` as ``python script.py`` would set them, so the
``nr`` API the job entry point prepared is live inside it.
"""

from __future__ import annotations

import runpy
import shutil
import sys
import tarfile
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from nimbus.datasets.archive import copy_member, iter_files
from nimbus.datasets.domain import IngestLimits
from nimbus.errors import InvalidInput
from nimbus.runtime.keras_backend import HINT

DEFAULT_ENTRY = "main.py"
NOTEBOOK_ENTRY = "main.ipynb"
NOTEBOOK = "ipynb"  # the code format of a notebook


class UserCodeError(Exception):
    """The script raised or exited non-zero; its traceback was already printed."""


def unpack(code_file: Path, entry: str | None, dest: Path, kind: str | None = None) -> Path:
    """Put the code of ``code_file`` under ``dest``; returns the script to run.

    ``kind`` is the code's format, ``"py"``, ``"ipynb"`` or ``"tar"`` (plain or gzipped);
    when None it is told from the bytes (a tar, else a script).
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    name = _safe_entry(entry)
    if kind == "tar" or (kind is None and tarfile.is_tarfile(code_file)):
        # The same checked reader as dataset archives (no links, absolute paths or ..,
        # bounded size); tarfile's extraction filters are missing before Python 3.11.4.
        for member in iter_files(code_file, IngestLimits(), "code archive"):
            target = dest.joinpath(*PurePosixPath(member.path).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_member(member, target)
        script = dest / (name or DEFAULT_ENTRY)
    else:
        default = NOTEBOOK_ENTRY if kind == NOTEBOOK else DEFAULT_ENTRY
        suffix = PurePosixPath(default).suffix
        script = dest / (name if name and name.endswith(suffix) else default)
        shutil.copyfile(code_file, script)
    if not script.is_file():
        raise InvalidInput(f"the code has no entry script {script.relative_to(dest)}")
    return script


def _safe_entry(entry: str | None) -> str | None:
    if not entry:
        return None
    path = PurePosixPath(entry)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidInput(f"invalid entry script {entry!r}")
    return str(path)


def run_script(script: Path, argv: Sequence[str] = ()) -> None:
    """Run ``script`` as ``__main__``; raises :class:`UserCodeError` if it fails.

    ``SystemExit`` with code 0 or None is success; any other exit code, and any exception,
    is the script's failure: its traceback (from the script's first frame on) goes to
    stderr. ``BaseException``s that are not errors of the script (the job being fenced or
    cancelled, KeyboardInterrupt) pass through untouched.
    """
    with _script_context(script, argv):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            if exc.code is None or exc.code == 0:
                return
            print(f"the script exited with {exc.code}", file=sys.stderr, flush=True)
            raise UserCodeError(f"the script exited with {exc.code}") from None
        except Exception as exc:
            _print_user_traceback(exc, script)
            if _missing_tensorflow(exc):
                print(f"nimbus: {HINT}", file=sys.stderr, flush=True)
            raise UserCodeError(f"the script raised {type(exc).__name__}: {exc}") from exc


@contextmanager
def _script_context(script: Path, argv: Sequence[str]) -> Iterator[None]:
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def _missing_tensorflow(exc: BaseException) -> bool:
    """Did the script fail for want of TensorFlow (Keras on its TensorFlow backend)?"""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and (seen.name or "").split(".")[0] == (
            "tensorflow"
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _print_user_traceback(exc: BaseException, script: Path) -> None:
    """The traceback without the runtime's and runpy's frames above the script."""
    tb = exc.__traceback__
    while tb is not None and Path(tb.tb_frame.f_code.co_filename) != script:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
