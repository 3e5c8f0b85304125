"""The Python SDK: one :class:`Client` over the REST API of docs/api.md (httpx underneath).

``Client`` is assembled from one mixin per resource (:mod:`.tokens`, :mod:`.datasets`,
:mod:`.jobs`, :mod:`.models`, :mod:`.deployments`, :mod:`.quotas`, :mod:`.storage`) over
:class:`~.base.BaseClient`, whose ``_request``/``_stream`` add the token, turn transport
failures into :class:`~nimbus.errors.Unavailable` and rebuild server errors. A new resource is
a new mixin of a few lines per route.

Tests inject ``transport=httpx.MockTransport(handler)`` to run without a server.
"""

from __future__ import annotations

from nimbus.client.automl import AutomlMixin
from nimbus.client.base import load_login, save_login
from nimbus.client.cluster import ClusterMixin
from nimbus.client.datasets import DatasetRef, DatasetsMixin
from nimbus.client.deployments import DeploymentFailed, DeploymentsMixin
from nimbus.client.jobs import JobsMixin, WaitTimeout
from nimbus.client.models import ModelRef, ModelsMixin
from nimbus.client.quotas import QuotasMixin
from nimbus.client.runs import RunsMixin
from nimbus.client.sse import Event
from nimbus.client.storage import StorageMixin
from nimbus.client.studies import StudiesMixin
from nimbus.client.tokens import TokensMixin
from nimbus.client.transfer import CHUNK_SIZE, Progress
from nimbus.security import Role

__all__ = [
    "CHUNK_SIZE",
    "Client",
    "DatasetRef",
    "DeploymentFailed",
    "Event",
    "ModelRef",
    "Progress",
    "Role",
    "WaitTimeout",
    "load_login",
    "save_login",
]


class Client(
    DeploymentsMixin,
    ModelsMixin,
    StudiesMixin,
    AutomlMixin,
    JobsMixin,
    RunsMixin,
    DatasetsMixin,
    TokensMixin,
    QuotasMixin,
    StorageMixin,
    ClusterMixin,
):
    """A connection to one Nimbus control plane, authenticated with one token.

    ``url`` and ``token`` default to NIMBUS_URL / NIMBUS_TOKEN, else to what ``nimbus login``
    saved (the saved token is only sent to the URL it was saved for), else the default URL.
    Use it as a context manager, or call :meth:`close`.
    """

    def __enter__(self) -> Client:
        return self
