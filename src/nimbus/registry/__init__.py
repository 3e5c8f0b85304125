"""Model registry: versions, aliases, lineage, and export to the model directory format."""
