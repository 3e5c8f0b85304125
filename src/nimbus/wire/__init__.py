"""The wire format: request and response bodies of the REST API as pydantic models.

Declared once and shared: routes use them as ``response_model`` (so the OpenAPI document
describes every response), services build them as their views, and the SDK returns them.
One module per resource; :mod:`.base` holds what they share. This package imports nothing
of Nimbus but the bottom modules (:mod:`nimbus.errors`, :mod:`nimbus.security`, the domain
enums), so the SDK can use it without the server's code.
"""
