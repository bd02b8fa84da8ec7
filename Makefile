# `make test` works from a fresh clone: it builds .venv, installs the project with its
# test extras, and runs the suite.  torch/torchvision are pinned first so pip never
# pulls another torch build (see README, "Install").
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test install demo train-shapes bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# First image with the bundled model (offline): installs if needed, then writes one PNG into outputs/.
demo: $(BIN)/.installed
	$(BIN)/unclip generate "a red square above a blue circle" --seed 1 -o outputs

clean:
	rm -rf $(VENV) build *.egg-info

# Train the bundled `shapes` model from scratch (about 4.5 hours on 2 CPU cores by the logged stage times, not
# timed as one run; the decoder is trained on a first CLIP, then fine-tuned to the one that keeps layout); logs in
# runs/shapes/. Start with an empty runs/shapes/: each run resumes from the state file in its output folder.
UNCLIP = $(BIN)/unclip
train-shapes: $(BIN)/.installed
	test -d data/shapes-256 || $(UNCLIP) data shapes --count 20000 --out data/shapes-256 --seed 0 --size 256
	test -d data/shapes-sw || $(UNCLIP) data shapes --count 12000 --out data/shapes-sw --seed 21 --size 256 --size-word-prob 0.5
	test -d data/shapes-1024-400 || $(UNCLIP) data shapes --count 400 --out data/shapes-1024-400 --seed 1 --size 1024
	test -d data/shapes-ft || $(UNCLIP) data shapes --count 24000 --out data/shapes-ft --seed 31 --size 256 --size-word-prob 0.5
	$(UNCLIP) train clip -c configs/shapes/clip-base.toml -o runs/shapes/clip-base
	$(BIN)/torchrun --nproc_per_node 2 -m unclip_cli train decoder -c configs/shapes/decoder.toml -o runs/shapes/decoder-base
	$(UNCLIP) train clip -c configs/shapes/clip.toml -o runs/shapes/clip
	$(UNCLIP) train prior -c configs/shapes/prior.toml -o runs/shapes/prior-1000
	test -d runs/shapes/prior-2000 || cp -r runs/shapes/prior-1000 runs/shapes/prior-2000
	$(UNCLIP) train prior -c configs/shapes/prior-2000.toml -o runs/shapes/prior-2000
	mkdir -p runs/shapes/prior
	test -f runs/shapes/prior/prior.safetensors || $(BIN)/python scripts/average_stages.py \
	  runs/shapes/prior/prior.safetensors runs/shapes/prior-1000/prior.safetensors runs/shapes/prior-2000/prior.safetensors
	cp runs/shapes/prior-2000/log.jsonl runs/shapes/prior/log.jsonl
	$(BIN)/torchrun --nproc_per_node 2 -m unclip_cli train decoder -c configs/shapes/decoder-relation.toml -o runs/shapes/decoder-relation
	$(BIN)/torchrun --nproc_per_node 2 -m unclip_cli train decoder -c configs/shapes/decoder-relation2.toml -o runs/shapes/decoder
	$(UNCLIP) train upsampler -c configs/shapes/sr256.toml -o runs/shapes/sr256
	$(UNCLIP) train upsampler -c configs/shapes/sr1024.toml -o runs/shapes/sr1024
	$(BIN)/python scripts/bundle_shapes.py runs/shapes
