"""Karlo v1 alpha on CPU: memory and time of unclip's stage-by-stage loading vs diffusers' UnCLIPPipeline.

Both read the same folder in the Hub's diffusers layout, filled with random weights (no download):

    python benchmarks/bench_karlo.py make FOLDER [--reduced]        # write random Karlo weights (~13.7 GB full)
    python benchmarks/bench_karlo.py unclip FOLDER [--generate]     # unclip: load each stage alone, then drop it
    python benchmarks/bench_karlo.py diffusers FOLDER [--generate]  # diffusers: load every component, keep all
    python benchmarks/bench_karlo.py all FOLDER [--reduced] [--generate] [--json OUT]   # make + both + table

`make` builds unclip's own modules (unclip_cli.karlo's configs -> Prior / TextProj / UNet, whose parameter
names are diffusers') and transformers' CLIPTextModelWithProjection on the meta device, so no memory is spent
on them, and streams seeded random values tensor by tensor into safetensors files (peak memory: the largest
tensor, ~70 MB), with the hub's config.json, scheduler configs, a CLIPTokenizer with Karlo's settings and
model_index.json. Full size = Karlo's hub configs; --reduced = the same block types, narrower (UNet channels
64/128/192/256, prior 6 x 256, CLIP text 4 x 256), ~50 M parameters, for a quick check of the script.

`unclip` and `diffusers` each run in their own process (`all` starts them as subprocesses) and report, per
stage/component, seconds to load and peak resident memory (VmHWM from /proc/self/status, reset before each
unclip stage through /proc/self/clear_refs, so each stage's peak is its own). --generate also makes one
256x256 image (steps --steps, default Karlo's 25,25,7; guidance 4/8) and reports its time and peak memory.
Loading includes reading the files: a cold page cache makes the first reader slower, so `all` reads every
file once first (--no-warm to skip).

Needs torch, safetensors and unclip; `make` and `diffusers` also need transformers, `diffusers` needs
diffusers (0.42: the deprecated unclip pipeline). Linux for the per-stage peaks (elsewhere: ru_maxrss only).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

from unclip_cli.weights.karlo import HUB_CONFIGS, HUB_SCHEDULERS

FULL = HUB_CONFIGS  # Karlo v1 alpha's config.json values

# Reduced: the same block types, narrower. The CLIP width is also the embedding size (as in Karlo, where both are
# 768): diffusers' prior and text_proj project CLIP's token states with in_features = the embedding size.
_SR_REDUCED = {**FULL["super_res_first"], "block_out_channels": [64, 128, 192, 256], "layers_per_block": 2}
REDUCED = {
    "prior": {**FULL["prior"], "num_attention_heads": 4, "num_layers": 6, "embedding_dim": 256},  # width 4 x 64
    "decoder": {**FULL["decoder"], "block_out_channels": [64, 128, 192, 256], "layers_per_block": 2,
                "cross_attention_dim": 256},
    "super_res_first": _SR_REDUCED,
    "super_res_last": {**_SR_REDUCED, "sample_size": None},
    "text_proj": {**FULL["text_proj"], "clip_embeddings_dim": 256, "cross_attention_dim": 256, "time_embed_dim": 256},
    "text_encoder": {**FULL["text_encoder"], "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "intermediate_size": 1024, "projection_dim": 256},
}
# unclip stage <- hub folder, and the file the hub keeps its weights in
STAGES = {"clip": "text_encoder", "prior": "prior", "text_proj": "text_proj", "decoder": "decoder",
          "sr256": "super_res_first", "sr256_last": "super_res_last"}
WEIGHTS_FILE = {"text_encoder": "model.safetensors"}  # others: diffusion_pytorch_model.safetensors
PROMPT = "a high-resolution photograph of a big red frog on a green leaf"


# Memory and time ----------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_gb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # no /proc: ru_maxrss is KB on Linux, bytes on macOS
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = r / 1024 if sys.platform == "darwin" else r
    return kb / 2**20


def rss_gb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0) / 2**20


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# make: random weights in the hub's diffusers layout -----------------------------------------------------------
def _fill(name: str, shape: tuple, seed: int) -> torch.Tensor:
    """Seeded values that keep every stage finite: scaled normal matrices, unit-ish norms, small biases."""
    g = torch.Generator().manual_seed(seed)
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if name == "clip_std":
        return 0.2 + 0.4 * torch.rand(shape, generator=g)
    x = torch.randn(shape, generator=g)
    if len(shape) >= 2:
        return x / math.sqrt(math.prod(shape[1:]))
    return 1.0 + 0.1 * x if name.endswith("weight") else 0.1 * x


_DTYPES = {torch.float32: ("F32", 4), torch.int64: ("I64", 8)}


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple, torch.dtype]], seed: int) -> int:
    """Stream a safetensors file tensor by tensor (never holding more than one); returns its size."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (shape, dtype) in tensors.items():
        n = math.prod(shape) * _DTYPES[dtype][1]
        header[name] = {"dtype": _DTYPES[dtype][0], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, (name, (shape, dtype)) in enumerate(tensors.items()):
            t = _fill(name, shape, seed * 100_003 + i).to(dtype).contiguous()
            f.write(t.numpy().data)
    tmp.replace(path)
    return path.stat().st_size


def _shapes(folder: str, cfg: dict) -> dict[str, tuple[tuple, torch.dtype]]:
    """Parameter names and shapes of a component, from modules built on the meta device (no memory)."""
    with torch.device("meta"):
        if folder == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModelWithProjection

            fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
            module = CLIPTextModelWithProjection(CLIPTextConfig(**fields))
        else:
            from unclip_cli.weights import karlo
            from unclip_cli.models.prior import Prior
            from unclip_cli.models.text_proj import TextProj
            from unclip_cli.models.unet import UNet

            module = {"prior": lambda: Prior(karlo.prior_config(cfg)),
                      "text_proj": lambda: TextProj(karlo.text_proj_config(cfg))}.get(
                folder, lambda: UNet(karlo.unet_config(cfg)))()
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def tokenizer():
    """Karlo's CLIPTokenizer (openai/clip-vit-large-patch14 BPE, pad "!" = id 0), built offline from the BPE
    vocabulary that ships with open_clip (shared/reference/karlo.md sec. 8)."""
    import gzip

    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(m.split()) for m in gzip.open(bpe).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, pad_token="!", model_max_length=77)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 49407
    return tok


def make(root: Path, reduced: bool, seed: int = 0) -> dict:
    configs = REDUCED if reduced else FULL
    root.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "UnCLIPPipeline", "_diffusers_version": "0.11.0.dev0"}
    sizes, t0 = {}, time.perf_counter()
    for i, (folder, cfg) in enumerate(configs.items()):
        sub = root / folder
        sub.mkdir(exist_ok=True)
        (sub / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        shapes = _shapes(folder, cfg)
        sizes[folder] = write_safetensors(sub / WEIGHTS_FILE.get(folder, "diffusion_pytorch_model.safetensors"),
                                          shapes, seed + i)
        library = "transformers" if folder == "text_encoder" else "unclip" if folder == "text_proj" else "diffusers"
        index[folder] = [library, cfg.get("_class_name") or cfg["architectures"][0]]
        print(f"  {folder}: {sum(math.prod(s) for s, _ in shapes.values()) / 1e6:.1f} M parameters, "
              f"{sizes[folder] / 1e9:.3f} GB", file=sys.stderr)
    for name, cfg in HUB_SCHEDULERS.items():
        (root / name).mkdir(exist_ok=True)
        (root / name / "scheduler_config.json").write_text(
            json.dumps({"_class_name": "UnCLIPScheduler", "_diffusers_version": "0.11.0.dev0", **cfg}, indent=2))
        index[name] = ["diffusers", "UnCLIPScheduler"]
    tokenizer().save_pretrained(root / "tokenizer")
    index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (root / "bench_layout.json").write_text(json.dumps({"reduced": reduced, "seed": seed}))
    return {"folder": str(root), "reduced": reduced, "bytes": sum(sizes.values()), "files": sizes,
            "seconds": round(time.perf_counter() - t0, 2)}


def complete(root: Path, reduced: bool) -> bool:
    try:
        layout = json.loads((root / "bench_layout.json").read_text())
    except (OSError, ValueError):
        return False
    return layout.get("reduced") == reduced and (root / "model_index.json").is_file()


# unclip: one stage at a time ----------------------------------------------------------------------------------
def _steps(text: str) -> tuple[int, int, int]:
    p, d, s = (int(x) for x in text.split(","))
    return p, d, s


def run_unclip(root: Path, generate: bool, steps: str) -> dict:
    from unclip_cli import options
    from unclip_cli.pipeline import cascade as pipeline, stages as stages_mod
    from unclip_cli.cli import run as runner

    out = {"runner": "unclip", "stages": {}, "rss_start_gb": round(rss_gb(), 3)}
    t0 = time.perf_counter()
    stages, size = stages_mod.open_model(str(root), torch.device("cpu"), torch.float32, 256, keep_loaded=False)
    out["open_and_check_s"] = round(time.perf_counter() - t0, 3)  # resolve folder + header checks of every file
    per_stage = reset_peak()
    for stage in STAGES:
        gc.collect()
        reset_peak()
        before = rss_gb()
        t = time.perf_counter()
        stages.get(stage)
        seconds = time.perf_counter() - t
        held = rss_gb()
        stages.release(stage)
        out["stages"][stage] = {"load_s": round(seconds, 3), "peak_rss_gb": round(peak_rss_gb(), 3),
                                "held_gb": round(held - before, 3)}
        print(f"  unclip {stage:10s} load {seconds:7.2f} s  peak RSS {peak_rss_gb():6.2f} GB", file=sys.stderr)
    out["peak_rss_per_stage_is_exact"] = per_stage
    out["peak_rss_gb"] = round(max(s["peak_rss_gb"] for s in out["stages"].values()), 3)
    out["load_total_s"] = round(sum(s["load_s"] for s in out["stages"].values()), 3)
    if generate:
        p, d, s = _steps(steps)
        gc.collect()
        reset_peak()
        opts = options.resolve(stages.spec.defaults, dict(prior_steps=p, decoder_steps=d, sr_steps=s, sampler="ddpm",
                                                          spacing="uniform"), size)  # as diffusers samples
        progress = runner.StageProgress(quiet=True)
        t = time.perf_counter()
        image = pipeline.generate(stages, [PROMPT], opts, runner.generators([0]), progress)
        out["generate"] = {"seconds": round(time.perf_counter() - t, 2), "steps": [p, d, s],
                           "peak_rss_gb": round(peak_rss_gb(), 3), "stage_seconds": progress.timings,
                           "finite": bool(torch.isfinite(image).all())}
    return out


# diffusers: everything at once --------------------------------------------------------------------------------
def diffusers_classes() -> dict:
    """UnCLIPPipeline's component classes by hub folder (progress bars off)."""
    import diffusers
    import transformers
    from diffusers.pipelines.deprecated.unclip import UnCLIPTextProjModel
    from transformers import CLIPTextModelWithProjection

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    return {"text_encoder": CLIPTextModelWithProjection, "prior": diffusers.PriorTransformer,
            "text_proj": UnCLIPTextProjModel, "decoder": diffusers.UNet2DConditionModel,
            "super_res_first": diffusers.UNet2DModel, "super_res_last": diffusers.UNet2DModel}


def diffusers_pipeline(root: Path, parts: dict):
    """UnCLIPPipeline over loaded components, with Karlo's schedulers and the folder's tokenizer (built
    component by component: the folder's model_index.json may name unclip's own classes)."""
    import diffusers
    from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline
    from transformers import CLIPTokenizer

    scheds = {n: diffusers.UnCLIPScheduler(**cfg) for n, cfg in HUB_SCHEDULERS.items()}
    pipe = UnCLIPPipeline(tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"), **parts, **scheds)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(root: Path, generate: bool, steps: str) -> dict:
    classes = diffusers_classes()
    out = {"runner": "diffusers", "components": {}, "rss_start_gb": round(rss_gb(), 3)}
    parts = {}
    for folder, cls in classes.items():
        t = time.perf_counter()
        parts[folder] = cls.from_pretrained(root / folder, torch_dtype=torch.float32).eval()
        seconds = time.perf_counter() - t
        out["components"][folder] = {"load_s": round(seconds, 3), "rss_after_gb": round(rss_gb(), 3)}
        print(f"  diffusers {folder:15s} load {seconds:7.2f} s  RSS {rss_gb():6.2f} GB", file=sys.stderr)
    out["peak_rss_gb"] = round(peak_rss_gb(), 3)
    out["load_total_s"] = round(sum(c["load_s"] for c in out["components"].values()), 3)
    if generate:
        p, d, s = _steps(steps)
        pipe = diffusers_pipeline(root, parts)
        t = time.perf_counter()
        with torch.no_grad():
            image = pipe(PROMPT, prior_num_inference_steps=p, decoder_num_inference_steps=d,
                         super_res_num_inference_steps=s, prior_guidance_scale=4.0, decoder_guidance_scale=8.0,
                         generator=torch.Generator().manual_seed(0), output_type="np").images
        out["generate"] = {"seconds": round(time.perf_counter() - t, 2), "steps": [p, d, s],
                           "peak_rss_gb": round(peak_rss_gb(), 3),
                           "finite": bool(torch.isfinite(torch.as_tensor(image)).all())}
    return out


# all ----------------------------------------------------------------------------------------------------------
def warm(root: Path) -> float:
    """Read every file once, so neither runner pays for a cold page cache alone."""
    t = time.perf_counter()
    for f in sorted(root.rglob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return round(time.perf_counter() - t, 2)


def _child(kind: str, root: Path, args) -> dict:
    cmd = [sys.executable, __file__, kind, str(root), "--json", "-", "--steps", args.steps]
    cmd += ["--generate"] if args.generate else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return {"runner": kind, "error": f"exit status {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(u: dict, d: dict) -> str:
    rows = [f"{'stage':12s} {'unclip load s':>14s} {'unclip peak GB':>15s} {'diffusers load s':>17s}"]
    for stage, folder in STAGES.items():
        us = u.get("stages", {}).get(stage, {})
        dc = d.get("components", {}).get(folder, {})
        rows.append(f"{stage:12s} {us.get('load_s', float('nan')):14.2f} {us.get('peak_rss_gb', float('nan')):15.2f} "
                    f"{dc.get('load_s', float('nan')):17.2f}")
    rows.append(f"{'all stages':12s} {u.get('load_total_s', float('nan')):14.2f} "
                f"{u.get('peak_rss_gb', float('nan')):15.2f} {d.get('load_total_s', float('nan')):17.2f}")
    rows.append(f"peak RSS: unclip {u.get('peak_rss_gb', float('nan')):.2f} GB (largest single stage), "
                f"diffusers {d.get('peak_rss_gb', float('nan')):.2f} GB (all components held)")
    for r in (u, d):
        if "generate" in r:
            g = r["generate"]
            rows.append(f"generate ({r['runner']}, steps {g['steps']}): {g['seconds']:.1f} s, "
                        f"peak RSS {g['peak_rss_gb']:.2f} GB, finite {g['finite']}")
        if "error" in r:
            rows.append(f"{r['runner']}: {r['error']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("make", "unclip", "diffusers", "all"))
    ap.add_argument("folder", type=Path, help="folder for the diffusers-layout weights")
    ap.add_argument("--reduced", action="store_true", help="small layout (~50 M parameters) instead of Karlo's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="make: rewrite the weights even if present")
    ap.add_argument("--generate", action="store_true", help="also make one 256x256 image and time it")
    ap.add_argument("--steps", default="25,25,7", help="prior,decoder,upsampler steps for --generate")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-warm", action="store_true", help="all: do not pre-read the files")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file ('-': stdout)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.folder.expanduser().resolve()
    if args.command == "make":
        result = make(root, args.reduced, args.seed) if args.force or not complete(root, args.reduced) else \
            {"folder": str(root), "reused": True}
    elif args.command == "unclip":
        result = run_unclip(root, args.generate, args.steps)
    elif args.command == "diffusers":
        result = run_diffusers(root, args.generate, args.steps)
    else:
        made = make(root, args.reduced, args.seed) if args.force or not complete(root, args.reduced) else \
            {"folder": str(root), "reused": True}
        warm_s = None if args.no_warm else warm(root)
        u, d = _child("unclip", root, args), _child("diffusers", root, args)
        result = {"make": made, "warm_read_s": warm_s, "unclip": u, "diffusers": d, "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
        print(table(u, d))
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all("error" not in result.get(k, {}) for k in ("unclip", "diffusers")) else 1


if __name__ == "__main__":
    sys.exit(main())
