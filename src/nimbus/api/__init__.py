"""The REST API (``/api/v1``): the app (:mod:`.app`), auth dependencies, one router per
resource (:mod:`.routes`).

The package face is empty on purpose: importing a submodule does not load FastAPI's whole
app. The control plane is assembled in :func:`nimbus.server.build_app`.
"""
