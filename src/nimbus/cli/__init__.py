"""The ``nimbus`` command line, built on the SDK in :mod:`nimbus.client`."""
