"""Table of the steps-vs-accuracy curve: one row per benchmarks/results/steps/*.json (from steps_curve.sh).

    python benchmarks/steps_table.py [--log FILE] [--dir DIR]   # FILE: steps_curve.sh's stderr, for the seconds per run
"""

import argparse
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results" / "steps"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", default=None)
    ap.add_argument("--dir", default=str(HERE), help="folder of eval JSON files (default: results/steps)")
    a = ap.parse_args()
    seconds = {}
    if a.log:
        for m in re.finditer(r"^(\S+) ([\d.]+) s$", Path(a.log).read_text(), re.M):
            seconds[m.group(1)] = float(m.group(2))
    print("| setting | dtype | sampler | spacing | prior / decoder (/ upsampler) steps | colour | shape | count, 1 object | "
          "full caption, 1 object | full caption, 2 objects | full caption, all prompts | s for the images |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in sorted(Path(a.dir).glob("*.json"), key=lambda p: p.stat().st_mtime):
        d = json.loads(f.read_text())
        o, r = d["options"], d["modes"]["prior"]["all_prompts"]
        steps = f"{o['prior_steps']} / {o['decoder_steps']}" + (f" / {o['sr_steps']}" if d_size(d) else "")
        pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
        print(f"| {f.stem} | {d.get('dtype', 'fp32')} | {o['sampler']} | {o.get('spacing', 'uniform')} | "
              f"{steps} | {pct(r['overall']['color'])} | {pct(r['overall']['shape'])} | "
              f"{pct(r['one_object']['count'])} | {pct(r['one_object']['all'])} | {pct(r['two_objects']['all'])} | "
              f"{pct(r['overall']['all'])} | {seconds.get(f.stem, '')} |")


def d_size(d: dict) -> bool:
    """Judged after the upsampler (eval --size above the decoder's): its steps count too."""
    return int(d.get("size") or 0) > 64


if __name__ == "__main__":
    main()
