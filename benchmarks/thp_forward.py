"""Huge pages or not: one stage's forward call and load, in fresh processes with and without torch's
THP_MEM_ALLOC_ENABLE (which `unclip`'s main sets), interleaved.

    python benchmarks/thp_forward.py FOLDER [--stage decoder|sr256] [--dtype fp32|bf16] [--rounds 2] [--reps 2]

FOLDER: a Karlo-layout folder (e.g. from `bench_karlo.py make`). Prints one line per process: the load
seconds and the seconds of each forward call (random inputs, seed 0, t = 500).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def child(folder: str, stage: str, dtype_name: str, reps: int) -> None:
    import torch

    from unclip_cli.pipeline import stages as S

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    st, _ = S.open_model(folder, "cpu", dtype, 256)
    t = time.perf_counter()
    m = st.get(stage)
    load = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    if stage == "decoder":
        b, size, kw = 2, 64, {"emb": torch.randn(2, m.cfg.time_dim, generator=g).to(dtype)}
        if m.cfg.context_dim:
            kw["context"] = torch.randn(2, 10, m.cfg.context_dim, generator=g).to(dtype)
    else:
        b, size, kw = 1, 256, {"low_res": torch.randn(1, 3, 256, 256, generator=g).to(dtype)}
    x = torch.randn(b, 3, size, size, generator=g).to(dtype)
    if st.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = []
    with torch.no_grad():
        for _ in range(reps):
            t = time.perf_counter()
            m(x, torch.tensor([500] * b), **kw)
            calls.append(round(time.perf_counter() - t, 2))
    import resource

    import unclip_cli

    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{stage} {dtype_name} THP_MEM_ALLOC_ENABLE={thp} ({Path(unclip_cli.__file__).parents[1]}): load {load:.2f} s, "
          f"calls {calls} s, peak RSS {rss:.2f} GB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--stage", default="decoder", choices=("decoder", "sr256"))
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.folder, a.stage, a.dtype, a.reps)
    base = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    cmd = [sys.executable, __file__, a.folder, "--stage", a.stage, "--dtype", a.dtype, "--reps", str(a.reps), "--child"]
    for _ in range(a.rounds):
        for thp in ("0", "1"):
            subprocess.run(cmd, env={**base, "THP_MEM_ALLOC_ENABLE": thp}, check=True)


if __name__ == "__main__":
    main()
