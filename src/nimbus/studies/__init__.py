"""Studies: hyperparameter searches whose trials are jobs (search spaces, sampling, pruning)."""
