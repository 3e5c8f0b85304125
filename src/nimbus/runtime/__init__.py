"""What runs inside a job: built-in models, their parameters, the trainer, evaluation."""
