"""unclip against diffusers on Karlo's full layout, side by side: whole command, per-stage seconds, peak RSS.

    python benchmarks/bench_speed.py FOLDER [--steps 3,3,2] [--runs 2] [--variants V,...] [--json OUT]
    python benchmarks/bench_speed.py throughput          # this CPU's matrix-product and convolution GFLOP/s

FOLDER is a diffusers-layout Karlo folder (random weights: `python benchmarks/bench_karlo.py make FOLDER`).
A variant is `diffusers[:P-D-S]` (UnCLIPPipeline, fp32, its DDPM) or `unclip:DTYPE[:SAMPLER:SPACING[:P-D-S]]` (the real
`unclip generate` command), e.g. `unclip:fp32`, `unclip:bf16`, `unclip:bf16:dpmpp_2m:logsnr:12-12-4`. Every
variant runs as its own process, the variants interleaved, `--runs` rounds (the machine is shared and noisy:
the faster run counts); the same prompt, seed 0, 256x256 and, unless a variant names its own, the same steps.
Per run: wall seconds of the whole command (start to exit: imports, loading, sampling, writing), seconds of
sampling per stage (unclip: its --json timings; diffusers: forward hooks around each component, so its prior
time includes nothing but the prior's network calls), peak RSS of the process (wait4), and the image, whose
mean/max distance in 0-255 levels to the first variant's is reported (same seed: fp32 against fp32 is the
parity check; at other dtypes/samplers it is the cost in pixels). With `--cold` every file of FOLDER is
dropped from the OS page cache (posix_fadvise DONTNEED) before each run, as after a reboot.

`throughput` measures the peak this CPU reaches on one large matrix product and one 3x3 convolution per dtype;
with `--flops` the comparison also reports each stage's FLOPs per network call (torch's FlopCounterMode on the
meta device) and its achieved share of that peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT = "a high-resolution photograph of a big red frog on a green leaf"
HERE = Path(__file__).resolve()
UNCLIP = Path(sys.executable).with_name("unclip")


def evict(folder: Path) -> int:
    """Drop every file under `folder` from the page cache (clean pages only; no root needed). Bytes advised."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Start, wait with wait4 (peak RSS of exactly this child), return wall/rss/stdout."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        p = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0), se.seek(0)
        out, err = so.read(), se.read()
    if p.returncode != 0:
        sys.stderr.write(f"{' '.join(cmd)}: exit {p.returncode}\n{err[-3000:]}\n")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3), "rc": p.returncode,
            "stdout": out}


def parse_variant(v: str, steps: str) -> dict:
    parts = v.split(":")
    if parts[0] == "diffusers":  # diffusers[:P-D-S]
        return {"name": v, "kind": "diffusers", "dtype": "fp32", "sampler": "ddpm", "spacing": "uniform",
                "steps": parts[1].replace("-", ",") if len(parts) > 1 else steps}
    if parts[0] != "unclip":
        raise SystemExit(f"unknown variant {v!r}: it starts with diffusers or unclip")
    dtype = parts[1] if len(parts) > 1 else "fp32"
    sampler = parts[2] if len(parts) > 2 else "ddpm"
    spacing = parts[3] if len(parts) > 3 else "uniform"
    return {"name": v, "kind": "unclip", "dtype": dtype,
            "sampler": sampler, "spacing": spacing,
            "steps": parts[4].replace("-", ",") if len(parts) > 4 else steps}


def run_variant(var: dict, folder: Path, work: Path) -> dict:
    p, d, s = var["steps"].split(",")
    if var["kind"] == "diffusers":
        npy = work / "diffusers.npy"
        cmd = [sys.executable, str(HERE), "diffusers-run", str(folder), "--steps", var["steps"], "--out", str(npy)]
        r = run_child(cmd)
        info = json.loads(r.pop("stdout").strip().splitlines()[-1]) if r["rc"] == 0 else {}
        image = np.load(npy) if r["rc"] == 0 else None
        return {**r, "stage_s": info.get("stage_s"), "image": image}
    out = work / f"out-{os.getpid()}-{time.time_ns()}"
    cmd = [str(UNCLIP), "generate", PROMPT, "--model", str(folder), "--seed", "0", "--size", "256",
           "--dtype", var["dtype"], "--sampler", var["sampler"], "--spacing", var["spacing"], "--prior-steps", p,
           "--decoder-steps", d, "--sr-steps", s, "--prior-guidance", "4", "--decoder-guidance", "8",
           "-o", str(out), "--json"]
    r = run_child(cmd)
    info = json.loads(r.pop("stdout")) if r["rc"] == 0 else {}
    image = None
    if r["rc"] == 0:
        from PIL import Image
        image = np.asarray(Image.open(info["images"][0]["path"]).convert("RGB"))
    return {**r, "stage_s": info.get("timings"), "image": image}


def diffusers_run(folder: Path, steps: str, out: Path) -> dict:
    """One UnCLIPPipeline image as a user would make it (fp32), with seconds per component."""
    import torch

    from bench_karlo import diffusers_classes, diffusers_pipeline

    parts = {n: cls.from_pretrained(folder / n, torch_dtype=torch.float32).eval()
             for n, cls in diffusers_classes().items()}
    pipe = diffusers_pipeline(folder, parts)
    seconds: dict[str, float] = {}
    for name in ("text_encoder", "prior", "decoder", "super_res_first", "super_res_last"):
        module = getattr(pipe, name)
        start = {}
        module.register_forward_pre_hook(lambda m, a, n=name: start.__setitem__(n, time.perf_counter()))
        module.register_forward_hook(lambda m, a, o, n=name: seconds.__setitem__(
            n, seconds.get(n, 0.0) + time.perf_counter() - start[n]))
    p, d, s = (int(x) for x in steps.split(","))
    with torch.no_grad():
        image = pipe(PROMPT, prior_num_inference_steps=p, decoder_num_inference_steps=d,
                     super_res_num_inference_steps=s, prior_guidance_scale=4.0, decoder_guidance_scale=8.0,
                     generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    np.save(out, (image * 255).round().clip(0, 255).astype(np.uint8))
    stage = {"prior": seconds.get("prior", 0), "decoder": seconds.get("decoder", 0),
             "sr256": seconds.get("super_res_first", 0) + seconds.get("super_res_last", 0)}
    return {"stage_s": {k: round(v, 3) for k, v in stage.items()}}


def throughput(reps: int = 3) -> dict:
    """GFLOP/s of a 2048^3 matrix product and of a 3x3 convolution (320 -> 320 channels, 128x128, channels_last)."""
    import torch
    import torch.nn.functional as F

    out = {"threads": torch.get_num_threads()}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        a, b = torch.randn(2048, 2048).to(dt), torch.randn(2048, 2048).to(dt)
        x = torch.randn(1, 320, 128, 128).to(dt).to(memory_format=torch.channels_last)
        w = (torch.randn(320, 320, 3, 3) / 60).to(dt).to(memory_format=torch.channels_last)
        res = {}
        for what, fn, flops in (("matmul", lambda: a @ b, 2 * 2048**3),
                                ("conv3x3", lambda: F.conv2d(x, w, padding=1), 2 * 320 * 320 * 9 * 128 * 128)):
            with torch.no_grad():
                fn()
                best = min(_timed(fn) for _ in range(reps))
            res[what] = round(flops / best / 1e9, 1)
        out[name] = res
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def stage_flops(folder: Path) -> dict:
    """FLOPs of one network call per stage, on the batch sampling uses (prior/decoder doubled for guidance)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from unclip_cli.weights import karlo

    out = {}
    for stage, sub in (("prior", "prior"), ("decoder", "decoder"), ("sr256", "super_res_first")):
        cfg = json.loads((folder / sub / "config.json").read_text())
        m = karlo._module(stage, cfg, stage)
        with torch.device("meta"), FlopCounterMode(display=False) as fc, torch.no_grad():
            t = torch.tensor(500)
            if stage == "prior":
                D = m.cfg.embedding_dim
                m(torch.zeros(2, D), t, text_embed=torch.zeros(2, D), text_tokens=torch.zeros(2, 77, D),
                  text_mask=torch.ones(2, 77, dtype=torch.bool))
            elif stage == "decoder":
                m(torch.zeros(2, 3, 64, 64), t, emb=torch.zeros(2, m.cfg.time_dim),
                  context=torch.zeros(2, 81, m.cfg.context_dim), context_mask=torch.ones(2, 81, dtype=torch.bool))
            else:
                m(torch.zeros(1, 3, 256, 256), t, low_res=torch.zeros(1, 3, 256, 256))
        out[stage] = fc.get_total_flops()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="Karlo-layout folder, or 'throughput'")
    ap.add_argument("--steps", default="3,3,2")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--variants", default="diffusers,unclip:fp32,unclip:bf16")
    ap.add_argument("--flops", action="store_true")
    ap.add_argument("--cold", action="store_true", help="drop FOLDER's files from the page cache before each run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--out", default=None)  # diffusers-run
    if len(sys.argv) > 1 and sys.argv[1] == "diffusers-run":
        a = ap.parse_args(sys.argv[2:])
        print(json.dumps(diffusers_run(Path(a.folder), a.steps, Path(a.out))))
        return 0
    a = ap.parse_args(argv)
    if a.folder == "throughput":
        print(json.dumps(throughput(), indent=1))
        return 0
    folder = Path(a.folder).resolve()
    variants = [parse_variant(v, a.steps) for v in a.variants.split(",")]
    results = {v["name"]: [] for v in variants}
    first_image = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.runs):
            for v in variants:
                if a.cold:
                    os.sync()
                    evict(folder)
                res = run_variant(v, folder, Path(tmp))
                image = res.pop("image")
                if image is not None and first_image is None:
                    first_image = image
                if image is not None:
                    diff = np.abs(image.astype(int) - first_image.astype(int))
                    res["levels_vs_first"] = {"mean": round(float(diff.mean()), 3), "max": int(diff.max()),
                                              "share_over_1": round(float((diff > 1).mean()), 5)}
                results[v["name"]].append(res)
                print(f"run {r + 1} {v['name']:40s} wall {res['wall_s']:7.1f} s  RSS {res['peak_rss_gb']:5.2f} GB  "
                      f"stages {res.get('stage_s')}  vs first {res.get('levels_vs_first')}", file=sys.stderr, flush=True)
    import torch
    summary = {"folder": str(folder), "steps": a.steps, "runs": a.runs, "cold": a.cold, "prompt": PROMPT,
               "torch": torch.__version__, "git": _git_revision(), "threads": torch.get_num_threads(),
               "cpu": _cpu_name(), "variants": {}}
    for v in variants:
        ok = [x for x in results[v["name"]] if x["rc"] == 0]
        best = min(ok, key=lambda x: x["wall_s"]) if ok else None
        summary["variants"][v["name"]] = {**{k: v[k] for k in ("kind", "dtype", "sampler", "spacing", "steps")},
                                          "best": best, "all": results[v["name"]]}
    if a.flops:
        summary["flops_per_call"] = stage_flops(folder)
        summary["throughput"] = throughput()
    text = json.dumps(summary, indent=1)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(table(summary))
    return 0


def _git_revision() -> str:
    """The commit the unclip variants ran, with "+changes" when the work tree differed from it."""
    root = HERE.parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return rev + ("+changes" if dirty.strip() else "") if rev else "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def table(summary: dict) -> str:
    rows = ["| variant | steps | whole command s | prior s | decoder s | upsampler s | peak RSS GB | vs first: mean / max levels |",
            "|---|---|---|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        b = v["best"]
        if b is None:
            rows.append(f"| {name} | {v['steps']} | failed | | | | | |")
            continue
        st = b.get("stage_s") or {}
        lv = b.get("levels_vs_first") or {}
        rows.append(f"| {name} | {v['steps']} | {b['wall_s']:.1f} | {st.get('prior', 0):.1f} | {st.get('decoder', 0):.1f} | "
                    f"{st.get('sr256', 0):.1f} | {b['peak_rss_gb']:.2f} | {lv.get('mean', '')} / {lv.get('max', '')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
