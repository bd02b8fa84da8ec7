"""Average stage files of one architecture, tensor by tensor (a "model soup" of checkpoints along one run).

Usage: python scripts/average_stages.py OUT.safetensors A.safetensors B.safetensors [...]

Every input must carry the same metadata (kind, config, diffusion spec) and the same tensor names, shapes and
dtypes. Tensors are averaged in float32 and stored in the inputs' dtype; the metadata is kept; OUT is written
atomically and never replaces an existing file. The bundled shapes prior since 2026-12-03 (fourth session) is the
mean of its run's exports at steps 1000 and 2000 (README "The prior, averaged over its run").
"""

import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def average(paths: list[Path]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if len(paths) < 2:
        raise ValueError("give at least two stage files to average")
    files = [safe_open(str(p), "pt") for p in paths]
    meta, keys = files[0].metadata() or {}, set(files[0].keys())
    for p, f in zip(paths[1:], files[1:]):
        if (f.metadata() or {}) != meta:
            raise ValueError(f"{p}: its metadata (kind, config or diffusion spec) differs from {paths[0]}'s")
        if set(f.keys()) != keys:
            raise ValueError(f"{p}: its tensor names differ from {paths[0]}'s "
                             f"(e.g. {sorted(set(f.keys()) ^ keys)[0]!r})")
    out = {}
    for key in sorted(keys):
        tensors = [f.get_tensor(key) for f in files]
        first = tensors[0]
        for p, t in zip(paths[1:], tensors[1:]):
            if t.shape != first.shape or t.dtype != first.dtype:
                raise ValueError(f"{p}: tensor {key!r} is {t.dtype} {tuple(t.shape)}, "
                                 f"{paths[0]} has {first.dtype} {tuple(first.shape)}")
        if not first.is_floating_point():
            if not all(torch.equal(first, t) for t in tensors[1:]):
                raise ValueError(f"tensor {key!r} is not floating point and differs between the files")
            out[key] = first
            continue
        out[key] = (sum(t.float() for t in tensors) / len(tensors)).to(first.dtype)
    return out, meta


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out, ins = Path(argv[0]), [Path(a) for a in argv[1:]]
    try:
        if out.exists():
            raise ValueError(f"{out} exists; not overwritten")
        for p in ins:
            if not p.is_file():
                raise ValueError(f"{p} is not a file")
        tensors, meta = average(ins)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    try:
        os.link(tmp, out)  # fails if OUT appeared meanwhile: never replaces a file
    finally:
        tmp.unlink()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
