"""Training jobs: the queue's domain, the pure policy, the scheduler loop and executors.

Import what you need from the submodules: :mod:`.domain` (jobs, attempts, states),
:mod:`.policy` (which job runs next, what an attempt's end means) and :mod:`.capacity` are
pure; :mod:`.queue` is the interface the scheduler reaches the queue through (the metadata
store implements it: :class:`nimbus.db.queue.DbQueue`); :mod:`.scheduler` is the loop;
:mod:`.executors` start processes, as the user :mod:`.isolation` chooses. Nothing here
imports the metadata store.
"""
