"""How the API writes a time, for services that still build their JSON views by hand.

The views themselves are wire models now (:mod:`nimbus.wire`), each built by its service;
``iso`` lives in :mod:`nimbus.wire.base` and is re-exported here for the modules that
import it from this one.
"""

from __future__ import annotations

from nimbus.wire.base import iso

__all__ = ["iso"]
