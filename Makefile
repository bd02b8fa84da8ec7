# `make test` works from a fresh clone: it builds .venv, installs the project with its
# test extras, and runs the suite.  torch/torchvision are pinned first so pip never
# pulls another torch build (see README, "Install").
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test install train-shapes bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
