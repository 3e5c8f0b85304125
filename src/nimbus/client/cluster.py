"""The cluster's status: ``/cluster`` (admin)."""

from __future__ import annotations

from nimbus.client.base import API, BaseClient
from nimbus.wire.cluster import ClusterStatus


class ClusterMixin(BaseClient):
    """``/cluster``."""

    def cluster_status(self) -> ClusterStatus:
        """The control planes (which one leads), the executor, the nodes with their
        resources and what runs on each, and the queue depth per tenant (admin)."""
        return self._call(ClusterStatus, "GET", f"{API}/cluster")
