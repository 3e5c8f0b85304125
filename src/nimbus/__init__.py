"""Nimbus: a self-hosted AI cloud, from training data to a live prediction endpoint.

``from nimbus import Client`` gives the SDK. It is resolved on first use (PEP 562), so that
importing any part of Nimbus (a serving replica, a job's runtime, the control plane) does
not load the SDK and httpx with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nimbus.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        return importlib.import_module("nimbus.client").Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
