"""What a model version is on disk: spec, export, verification (docs/model-format.md)."""
