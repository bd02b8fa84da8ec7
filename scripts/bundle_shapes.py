"""Copy the trained shapes stages into the package and list them in weights.toml.

Usage: python scripts/bundle_shapes.py runs/shapes
Copies every exported stage file into src/unclip_cli/bundled/shapes/, the training logs into
configs/shapes/logs/, and rewrites the `[models.shapes]` block of weights.toml (between the
BEGIN/END markers) with each file's sha256 and size.
"""

import hashlib
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "src" / "unclip_cli" / "bundled" / "shapes"
STAGES = {"clip": "clip", "prior": "prior", "text_proj": "decoder", "decoder": "decoder", "sr256": "sr256", "sr1024": "sr1024"}
BEGIN, END = "# BEGIN shapes (written by scripts/bundle_shapes.py)", "# END shapes"
DEFAULTS = """[models.shapes.defaults]
size = 256  # --size 1024 adds the 256->1024 upsampler (about 5 s more on 2 CPU threads)
# Sampler: DPM-Solver++(2M) SDE, log-SNR spacing, 16/16/4 steps (decoder 32 since, below), from the curve (README
# "Speed", 2026-12-02): full-caption accuracy within 1 point of DDPM at 25/25/10 (32 px: 42.3% vs 42.5%; 256 px:
# 46.7% vs 47.5%) in half the time; colour and shape 2-3 points lower. --sampler ddpm --spacing uniform
# --prior-steps 25 --decoder-steps 25 --sr-steps 10 --prior-guidance 3 gives the defaults before 2026-12-02.
sampler = "dpmpp_2m_sde"
spacing = "logsnr"
prior_steps = 16
# Decoder steps 32 (16 until 2026-12-03, seventh session), with two image candidates. `unclip eval --dtype fp32`,
# held-out (30 x 16, seeds 1000/2000/3000) / second set (30 x 8, seeds 1000/2000), 16 -> 32 steps: all prompts
# 83.3 -> 85.8% / 89.4 -> 90.8%, shape 86.7 -> 87.8% / 96.5 -> 96.2%, one-object captions 89.3 -> 92.4% / 98.8 ->
# 97.5%, two-object 76.5 -> 78.1% / 84.7 -> 87.5%. The decoder's time doubles: one 256 px image in bf16 0.77-0.84 ->
# 1.32-1.75 s, fp32 1.82 s (Zen 5, benchmarks/bench_shapes.py); README "Decoder steps 32".
decoder_steps = 32
sr_steps = 4
# Prior guidance 1.5 (3.0 until 2026-12-03), from a sweep on the held-out prompts (30 x 16) and the second set
# (30 x 8): full caption over all prompts 66.0% / 61.3% at 1.5 against 65.2% / 60.0% at 2.0 and 62.1% / 58.8% at 3.0;
# two-object captions 49.1% / 45.6% (3.0: 39.7% / 45.0%); README "Prior guidance" (2026-12-03).
prior_guidance = 1.5
decoder_guidance = 3.0
# With --negative-prompt: plain guidance away from the negative (0; the option's default, 1, rescales it). On these
# files at these defaults (benchmarks/toolkit_shapes.py --only negative --defaults --neg-cases
# 'a circle:circle:blue+red;a square:square:red', 32 seeds a row) 0 leaves none of the negative's colour in 96
# images against 0-12.5% with 1, and exactly one object in 53% / 34% / 97% of them against 28% / 19% / 69%
# (README "Negative prompts", 2026-12-03).
negative_rescale = 0.0
# Image candidates 2 (1 until 2026-12-03, fifth session): each image drawn twice through prior and decoder, the one
# CLIP puts closest to the prompt kept (DALL-E's reranking). `unclip eval --dtype fp32 --seed 1000`, held-out (30 x 16)
# / second set (30 x 8), 1 -> 2 candidates: colour 90.6 -> 96.9% / 93.3 -> 97.1%, one-object captions 85.2 -> 91.4% /
# 97.5 -> 98.8%, all 77.9 -> 84.6% / 87.1 -> 90.0% (held-out seeds 2000: all +2.5, two-object +5.8, colour +1.9,
# one-object -0.4); README "Image candidates". --image-candidates 1 is the old default.
# Three, tried (2026-12-03, sixth session): held-out over three seed ranges all 83.3 -> 84.5%, one-object 89.3 ->
# 91.4%, but the second set's one-object captions 98.8 -> 95.6% and no gain on seeds 3000: not adopted.
image_candidates = 2
"""


def main(runs: Path) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    logs = ROOT / "configs" / "shapes" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    lines = [BEGIN, "[models.shapes]",
             'description = "our own small unCLIP trained on the procedural shapes world (offline, bundled)"',
             'format = "unclip"', "", DEFAULTS, "[models.shapes.stages]"]
    for stage, run in STAGES.items():
        src = runs / run / f"{stage}.safetensors"
        if not src.exists():
            print(f"skipping {stage}: {src} not found")
            continue
        shutil.copyfile(src, DEST / src.name)
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        lines.append(f'{stage} = {{ package = "bundled/shapes/{src.name}", sha256 = "{sha}", size = {src.stat().st_size} }}')
        if (runs / run / "log.jsonl").exists():
            shutil.copyfile(runs / run / "log.jsonl", logs / f"{run}.jsonl")
    lines.append(END)
    toml = ROOT / "weights.toml"
    text = toml.read_text()
    block = "\n".join(lines)
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    toml.write_text(text)
    total = sum(p.stat().st_size for p in DEST.iterdir())
    print(f"bundled {len(list(DEST.iterdir()))} files, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/shapes"))
