"""Nimbus: a self-hosted AI cloud, from training data to a live prediction endpoint."""

__version__ = "0.1.0"
