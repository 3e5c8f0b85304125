"""Nimbus: a self-hosted AI cloud, from training data to a live prediction endpoint."""

from nimbus.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]
