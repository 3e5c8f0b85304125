"""Datasets: formats, safe archive handling, splits and the ingest pipeline."""
