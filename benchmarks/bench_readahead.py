"""What the stage-file readahead saves: each stage's load time from a cold page cache, with it on and off.

Usage: python benchmarks/bench_readahead.py FOLDER [--rounds 3] [--sample-s 8] [--json FILE]
A whole command's time is too noisy on this machine to show a few seconds of loading, so this times the loads
alone, through the real `Stages` (the order of a `generate` run): every file under FOLDER is dropped from the
page cache, then each stage is loaded in turn with `--sample-s` seconds of idle time after it, standing in for
the stage's sampling (the window the readahead has to warm the next file). Each round runs readahead on and off
in a fresh process, alternating which goes first. The seconds of the faster round of each count.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_speed import evict  # noqa: E402

def child(folder: str, sample_s: float) -> None:
    import torch

    from unclip_cli.pipeline import stages as stages_mod

    stages, _ = stages_mod.open_model(folder, "cpu", torch.float32, 256)
    out = {}
    for name in [s for s in stages_mod.LOAD_ORDER if s in stages.paths]:
        t = time.perf_counter()
        stages.get(name)
        out[name] = round(time.perf_counter() - t, 3)
        time.sleep(sample_s)
        stages.release(name)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sample-s", type=float, default=8.0)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.folder, args.sample_s)
    runs = {"on": [], "off": []}
    for r in range(args.rounds):
        for variant in (("on", "off") if r % 2 == 0 else ("off", "on")):
            evict(Path(args.folder))
            env = {**os.environ, "UNCLIP_READAHEAD": "1" if variant == "on" else "0"}
            p = subprocess.run([sys.executable, __file__, args.folder, "--sample-s", str(args.sample_s), "--child"],
                               env=env, capture_output=True, text=True, check=True)
            loads = json.loads(p.stdout.strip().splitlines()[-1])
            runs[variant].append(loads)
            print(f"round {r + 1} readahead {variant:3s} " + " ".join(f"{k} {v:.2f}" for k, v in loads.items())
                  + f"  total {sum(loads.values()):.2f} s", flush=True)
    best = {v: min(rs, key=lambda d: sum(d.values())) for v, rs in runs.items()}
    print("| readahead | " + " | ".join(best["on"]) + " | total |")
    print("|---|" + "---|" * (len(best["on"]) + 1))
    for v, d in best.items():
        print(f"| {v} | " + " | ".join(f"{x:.2f}" for x in d.values()) + f" | {sum(d.values()):.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"folder": args.folder, "sample_s": args.sample_s, "rounds": args.rounds, "runs": runs,
                       "best": best}, f, indent=1)


if __name__ == "__main__":
    main()
