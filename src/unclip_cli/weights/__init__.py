"""Models and their files: the registry (weights.toml; no torch), fetching, our checkpoints, and the Karlo / transformers converters."""
