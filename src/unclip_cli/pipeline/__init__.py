"""Inference: opening a model (`stages.py`), the cascade (`cascade.py`), sampling options (`options.py`), images on disk (`images.py`)."""
