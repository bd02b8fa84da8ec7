"""Time one 256x256 image from the bundled `shapes` model on this machine's CPU.

Usage: python benchmarks/bench_shapes.py [--size 256] [--repeats 5] [--threads N] [--dtype D] [--set OPTION=VALUE ...]
Prints per-stage seconds (median over repeats, after one warm-up run) and the total, in-process
(model files loaded once, as a long-running user would), and the wall time of one cold
`unclip generate` command (process start, imports and loading included).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the `unclip` command does, before torch loads
import torch  # noqa: E402

from unclip_cli import options
from unclip_cli.pipeline import cascade as pipeline, stages as stages_mod


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                    help="a sampling option instead of the model's default, e.g. --set sampler=ddpm --set sr_steps=10")
    args = ap.parse_args()
    given = {}
    for item in args.set:
        key, _, value = item.partition("=")
        given[key] = options.BY_NAME[key].type(value)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    stages, size = stages_mod.open_model(args.model, "cpu", dtype, args.size, keep_loaded=True)
    opts = options.resolve(stages.spec.defaults, given, size)
    runs = []
    for r in range(args.repeats + 1):
        marks: dict[str, float] = {}
        last = [time.perf_counter()]

        def report(stage, done, total):
            if done == total:
                now = time.perf_counter()
                marks[stage] = now - last[0]
                last[0] = now

        t0 = time.perf_counter()
        pipeline.generate(stages, ["a red square above a blue circle"], opts, [torch.Generator().manual_seed(r)], report)
        marks["total"] = time.perf_counter() - t0
        if r > 0:
            runs.append(marks)
    med = {k: round(statistics.median(m[k] for m in runs), 3) for k in runs[0]}
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "unclip_cli", "generate", "a red square above a blue circle",
                        "--size", str(size), "--seed", "0", "-o", out, "--device", "cpu",
                        "--dtype", args.dtype, *[f"--{k.replace('_', '-')}={v}" for k, v in given.items()]], check=True,
                       capture_output=True)
        cold = round(time.perf_counter() - t0, 2)
    print(json.dumps({"size": size, "dtype": args.dtype, "threads": torch.get_num_threads(), "options": opts.__dict__,
                      "in_process_median_s": med, "cold_cli_s": cold}, indent=2))


if __name__ == "__main__":
    main()
