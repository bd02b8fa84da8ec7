#!/usr/bin/env bash
# Issue 11's GPU benchmark (benchmarks/gpu_karlo.py) on the device tool's H200, in one call.
#
# 1. HERE, once, in the repo root (no GPU needed; ~8.7 MB of wheels into the ignored folder .whl):
#
#        bash benchmarks/gpu_karlo.sh prepare
#
#    = echo /.whl/ >> .git/info/exclude, then pip download (no deps, binary only, CPython 3.12, manylinux x86-64) of
#    the packages the device image lacks, at the versions of this project's .venv (pip freeze, 2026-12-03):
#        open_clip_torch==3.3.0 (unclip imports it)   ftfy==6.3.1 and wcwidth==0.9.4 (open_clip's)
#        diffusers==0.42.1 (the reference, as our tests)
#    The device image has torch 2.11, torchvision 0.26, timm, regex, tqdm, transformers 5.x, tokenizers, accelerate,
#    huggingface-hub >= 1.32, safetensors 0.8, numpy, pillow, requests, filelock, typer and rich (KINDS.md);
#    importlib_metadata is not needed on Python 3.12 (diffusers uses importlib.metadata there).
#
# 2. ON THE DEVICE: the tool's `run` with
#        command:   bash benchmarks/gpu_karlo.sh device
#        carry:     [".whl"]
#        timeout_s: 600
#    which is, spelled out:
#        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#        export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
#        set -o pipefail; python3 benchmarks/gpu_karlo.py $OUT 2>&1 | tee $OUT/gpu_karlo.log
#    Extra arguments after `device` go to gpu_karlo.py, e.g. a second, shorter try on a fresh machine:
#        bash benchmarks/gpu_karlo.sh device --budget 200 --variants diffusers:fp16,unclip:fp16,tune:fp16
#    It brings back $OUT/gpu_karlo.json, gpu_karlo.md (written after every variant) and gpu_karlo.log.
#
# Estimated device time (not measured: no GPU was lent when this was written): machine start 1-2 min; pip install
# ~10 s; random weights 15-40 s (13.7 GB drawn on the GPU, copied out, written to /dev/shm or /tmp); diffusers fp16
# 30-60 s (imports, 13.7 GB read and cast, three images); unclip fp16 and bf16 30-60 s each (each image reloads its
# stages); tune (eager, cudnn.benchmark, CUDA graphs) 30-60 s; the CLI twice 20-40 s; torch.compile (inductor,
# default mode) 1-4 min, killed at the budget if longer. The script stops launching at --budget 510 s, so the call
# ends by ~530 s; with the start that is ~11 of the 15 minutes, leaving no room for a full second run (a machine
# does not start with under 4 minutes left): pass a smaller --budget to keep a retry possible.
set -euo pipefail

WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 diffusers==0.42.1)
PY=${PYTHON:-python3}

case "${1:-}" in
prepare)
    cd "$(git rev-parse --show-toplevel)"
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    mkdir -p .whl
    for spec in "${WHEELS[@]}"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$spec"
    done
    ls -l .whl
    du -cb .whl/*.whl | tail -1
    git status --short --ignored .whl   # expect "!! .whl/": ignored, so it travels only through carry
    echo "tracked files: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes (with .whl: under 64 MiB)"
    ;;
device)
    shift
    : "${OUT:?OUT is set by the device tool}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" benchmarks/gpu_karlo.py "$OUT" "$@" 2>&1 | tee "$OUT/gpu_karlo.log"
    ;;
*)
    echo "usage: bash benchmarks/gpu_karlo.sh prepare | device [gpu_karlo.py options]" >&2
    exit 2
    ;;
esac
