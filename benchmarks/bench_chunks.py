"""What --batch-size costs: stage files are read again for every chunk.

    python benchmarks/bench_chunks.py [--model shapes] [--size 256] [-n 4] [--reps 3] [--json OUT]

Measures, on the CPU, (1) the seconds to read and build every stage a run at --size uses (the cost
paid once per chunk), (2) the seconds per image, and (3) the same -n images run as chunks of 1 and
as one chunk of n (what `unclip generate` does with --batch-size 1 and --batch-size n), checking the
pixels are identical. Each time is the median of --reps repetitions.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch

from unclip_cli import options
from unclip_cli.pipeline import cascade, images, stages as stages_mod

from bench_settings import DDPM_25


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    stages, size = stages_mod.open_model(a.model, torch.device("cpu"), torch.float32, a.size)
    opts = options.resolve(stages.spec.defaults, DDPM_25, size)

    def load_all():
        for s in stages.paths:
            stages.get(s)
            stages.drop(s)

    def run(chunk: int):
        seeds = list(range(a.n))
        out = []
        for i in range(0, a.n, chunk):
            gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + chunk]]
            out += images.to_pil(cascade.generate(stages, ["a red circle above a blue square"], opts, gens, one_by_one=True))
        return out

    load = median_time(load_all, a.reps)
    results = {}
    for chunk in (a.n, 1):
        t = time.perf_counter()
        pils = run(chunk)
        results[chunk] = (time.perf_counter() - t, [np.asarray(p) for p in pils])
    same = all(np.array_equal(x, y) for x, y in zip(results[1][1], results[a.n][1]))
    row = {"model": stages.spec.name, "size": size, "n": a.n, "threads": a.threads, "steps": [opts.prior_steps, opts.decoder_steps, opts.sr_steps],
           "stage_bytes": sum(p.stat().st_size for p in stages.paths.values()),
           "read_every_stage_s": round(load, 3), "one_chunk_s": round(results[a.n][0], 2),
           "chunks_of_1_s": round(results[1][0], 2), "per_image_s": round(results[a.n][0] / a.n, 2),
           "extra_per_chunk_s": round((results[1][0] - results[a.n][0]) / max(1, a.n - 1), 3), "pixels_identical": same}
    print(json.dumps(row))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
