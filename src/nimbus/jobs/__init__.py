"""Training jobs: the queue's domain model, pure scheduling decisions, executors and the
scheduler loop.

Import what you need from the submodules: :mod:`.model` and :mod:`.scheduling` are pure,
:mod:`.executors` start processes, :mod:`.scheduler` ties them to the metadata store.
"""
