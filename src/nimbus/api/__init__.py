"""The REST API (``/api/v1``): app factory, auth dependencies, one router per resource."""

from nimbus.api.app import create_app

__all__ = ["create_app"]
