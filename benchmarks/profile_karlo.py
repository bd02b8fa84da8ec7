"""Where each Karlo stage spends its time: one network evaluation per stage, profiled by operator.

    python benchmarks/profile_karlo.py FOLDER [--dtype fp32|bf16] [--layout contiguous|channels_last]
        [--stages prior,decoder,sr256] [--reps 2] [--threads 2] [--json OUT]

FOLDER is a diffusers-layout Karlo folder (random weights from `bench_karlo.py make`). Each stage is
loaded through unclip's own loader, then its network is called on the batch it gets while sampling
(prior and decoder: the doubled batch of classifier-free guidance; upsampler: one image at 256 px)
`--reps` times after a warm-up; the table groups operator self-time by kind (convolution, matrix
product, attention, normalization, elementwise, ...), from torch.profiler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from unclip_cli.pipeline import stages as stages_mod

KINDS = [("convolution", ("conv", "mkldnn_convolution", "_convolution")),
         ("matmul", ("addmm", "mm", "bmm", "linear", "matmul", "baddbmm")),
         ("attention", ("scaled_dot_product", "_flash_attention", "softmax")),
         ("normalization", ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm")),
         ("resample", ("upsample", "avg_pool", "interpolate")),
         ("layout copies", ("copy_", "contiguous", "clone", "cat", "to_dense", "_to_copy")),
         ("elementwise", ("silu", "gelu", "add", "mul", "sub", "div", "exp", "cos", "sin", "neg", "fill"))]


def kind_of(name: str) -> str:
    n = name.lower()
    for kind, keys in KINDS:
        if any(k in n for k in keys):
            return kind
    return "other"


def inputs(stage: str, module, dtype, layout):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    t = torch.tensor(500)
    if stage == "prior":
        D = module.cfg.embedding_dim
        mask = torch.ones(2, 77, dtype=torch.bool)
        mask[:, 20:] = False
        return lambda: module(r(2, D), t, text_embed=r(2, D), text_tokens=r(2, 77, D), text_mask=mask)
    cfg = module.cfg
    S = cfg.sample_size
    if stage == "decoder":
        x = r(2, 3, S, S)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
        emb, ctx = r(2, cfg.time_dim), r(2, 81, cfg.context_dim)
        mask = torch.ones(2, 81, dtype=torch.bool)
        return lambda: module(x, t, emb=emb, context=ctx, context_mask=mask)
    x, low = r(1, 3, 256, 256), r(1, 3, 256, 256)
    if layout == "channels_last":
        x, low = (a.to(memory_format=torch.channels_last) for a in (x, low))
    return lambda: module(x, t, low_res=low)


def profile_stage(stages, stage: str, dtype, layout: str, reps: int) -> dict:
    t = time.perf_counter()
    module = stages.get(stage)
    load_s = time.perf_counter() - t
    if stage != "prior":  # the loader puts half-precision UNets in channels_last on the CPU: set the asked layout
        from unclip_cli.models.unet import AttentionBlock

        if layout == "channels_last":
            module.to_channels_last()
        else:
            module.to(memory_format=torch.contiguous_format)
            for m in module.modules():
                if isinstance(m, AttentionBlock):
                    m.pixels_last = False
    call = inputs(stage, module, dtype, layout)
    with torch.no_grad():
        call()  # warm-up
        times = []
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
    by_kind, by_op = defaultdict(float), {}
    for e in prof.key_averages():
        by_kind[kind_of(e.key)] += e.self_cpu_time_total / 1e6 / reps
        by_op[e.key] = e.self_cpu_time_total / 1e6 / reps
    stages.release(stage)
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:8]
    return {"load_s": round(load_s, 2), "forward_s": round(min(times), 3), "forward_all_s": [round(x, 3) for x in times],
            "by_kind_s": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_ops_s": {k: round(v, 3) for k, v in top}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--layout", default="contiguous", choices=("contiguous", "channels_last"))
    ap.add_argument("--stages", default="prior,decoder,sr256")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    stages, _ = stages_mod.open_model(str(a.folder), torch.device("cpu"), dtype, 256, keep_loaded=False)
    out = {"dtype": a.dtype, "layout": a.layout, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "stages": {}}
    for stage in a.stages.split(","):
        r = profile_stage(stages, stage, dtype, a.layout, a.reps)
        out["stages"][stage] = r
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in r["by_kind_s"].items() if v >= 0.005)
        print(f"{stage:8s} {a.dtype} {a.layout:13s} forward {r['forward_s']:7.3f} s  ({kinds})", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
