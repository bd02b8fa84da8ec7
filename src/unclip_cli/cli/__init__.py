"""The `unclip` command line (`app.py`) and what its verbs do (`run.py`, `models.py`, `evaluate.py`)."""

from unclip_cli.cli.app import app, main

__all__ = ["app", "main"]
