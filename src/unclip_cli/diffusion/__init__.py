"""Diffusion math as pure functions: schedules and closed forms (`gaussian.py`), samplers (`samplers.py`),
training losses (`losses.py`) and the per-stage `DiffusionSpec` (`spec.py`). Imports nothing else from unclip_cli."""
