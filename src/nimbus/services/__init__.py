"""Services: the use cases behind the API, over the metadata store and the blob store.

They take a :class:`~nimbus.security.Principal`, check permissions, and return JSON-ready
dicts; they know nothing of HTTP.
"""
