"""Datasets: formats, safe archive handling, splits and the ingest pipeline.

``ingest.ingest`` is the entry point (validate -> prepare); ``detect`` picks the format,
``formats/`` reads one format per module through ``archive`` (safe extraction), ``labels``
and ``splits`` decide classes and splits, ``prepare`` writes the split files through
``rows`` (windowed file I/O) and ``stats`` summarizes them.
"""
