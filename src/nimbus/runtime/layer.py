"""A job's environment (``--requirements``), layered on the platform's packages.

The executor names the built environment in ``NIMBUS_JOB_ENV`` (see
:mod:`nimbus.jobs.environments`): a directory of packages, added after the platform's on
``sys.path`` (with its ``.pth`` files), so torch, numpy and the Nimbus runtime stay the
platform's, and the job imports what its requirements added.
"""

from __future__ import annotations

import importlib
import site
from collections.abc import Mapping

VARIABLE = "NIMBUS_JOB_ENV"


def activate(environ: Mapping[str, str]) -> str | None:
    """Add the job's environment to ``sys.path``, if it has one; returns its path."""
    path = environ.get(VARIABLE)
    if not path:
        return None
    site.addsitedir(path)
    importlib.invalidate_caches()
    return path
