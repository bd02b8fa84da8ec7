"""Karlo's full layout on a GPU: unclip (fp16, bf16) against diffusers' UnCLIPPipeline (fp16), stage by stage.

Issue 11: one prepared script for one call of the device tool (an H200), at most ~9 minutes in all
(`--budget`, default 510 s: no variant starts after it, a running one is killed at it). It

1. makes full-size random Karlo weights in the hub's diffusers layout (bench_karlo.make: its shapes, configs,
   schedulers, tokenizer and model_index.json; on CUDA the values are drawn on the GPU with bench_karlo's
   scaling, so the ~13.7 GB cost only the device-to-host copies and the writes: estimated 15-40 s, against
   ~30 s of CPU randn alone on one core here); in /dev/shm when it has room, else /tmp;
2. runs each variant in its own process (clean CUDA context, its own peak memory, a crash or an OOM recorded and
   not fatal), in order, each with the same prompt, seed 0, 256x256, guidance 4 / 8:
   - `diffusers:fp16`  UnCLIPPipeline, every component loaded and moved to the GPU (fp16), DDPM at the short
     steps (first image of the process: "cold", from process start), at Karlo's 25/25/7, and the short steps again;
   - `unclip:fp16`, `unclip:bf16`  our Python entry points as `unclip generate` runs them (open_model, stage by
     stage: each stage loaded when needed and released after), at the short steps (cold), Karlo's DDPM 25/25/7,
     our defaults (dpmpp_2m_sde, log-SNR, 16/16/4) and the short steps again;
   - `tune:fp16`  every stage kept loaded: eager (as the CLI samples), then torch.backends.cudnn.benchmark on,
     then each network (prior, decoder, both upsamplers) replayed from a CUDA graph per input shape
     (`Graphed` below), each phase timed at the short (warm-up, capture), Karlo and default settings;
   - `cli:fp16`  the real command, `python -m unclip_cli generate ... --device cuda --json`: at the short steps
     with fp16 / ddpm flags (whole command, and its image must equal the API's), then with nothing but
     `--dtype auto` (a user's run with the defaults);
   - `compile:fp16:MODE`  every stage kept loaded; eager, then `nn.Module.compile(mode=MODE, dynamic=False)` on
     the prior, the decoder and both upsamplers (first run = compilation); graph breaks recorded. Others can be
     asked for, e.g. `compile:fp16:max-autotune-no-cudagraphs` or `compile:fp16:reduce-overhead`. The decoder
     attention's K/V cache is skipped while dynamo traces (models/unet.py, `_context_kv`; once its
     `is_inference()` check broke the graph in every attention block); on the CPU: 0 graph breaks and 3 graphs
     (prior, decoder, both upsamplers in one).
3. Per run: seconds of the whole generate call, per stage (CUDA-synchronised at the stage's first and last step:
   sampling with the sampler's arithmetic; for diffusers from the first to the last network call of the stage,
   also synchronised), network-call sums (forward hooks, eager variants), stage loads (unclip stage by stage),
   peak GPU memory (max_memory_allocated / reserved, reset per run and per stage), and the image (uint8), whose
   distance in 0-255 levels is reported against diffusers fp16 at the same steps, against our fp16 for bf16 and
   the CLI, and against the same process's eager run for the tuned/compiled phases.
4. After every variant it writes OUT/gpu_karlo.json and OUT/gpu_karlo.md (partial results survive a timeout);
   progress lines go to stderr, flushed.

On the device (the exact `run` command and the preparation here: benchmarks/gpu_karlo.sh):

    python3 benchmarks/gpu_karlo.py $OUT

Here, on the CPU (reduced layout, tiny steps; every code path but the CUDA ones, and the CUDA-graph wrapper's
bookkeeping with the capture emulated; fp32, since diffusers' fp16 stops on the CPU (no Half kernel for its
antialiased bicubic resize; CUDA has one) and our fp16 runs ~5x slower than bf16 on this CPU; ~8 minutes on two cores):

    python benchmarks/gpu_karlo.py /tmp/gk-out --device cpu --reduced --folder /tmp/gk-karlo \\
        --short 2,2,2 --full 3,3,2 --defaults 2,2,2 --compile-backend eager \\
        --variants diffusers:fp32,unclip:fp32,unclip:bf16,tune:fp32,cli:fp32,compile:fp32:default

(`--compile-backend inductor` there too: C++ kernels, ~7 minutes of compiling on two cores, 0 graph breaks.)

Options: --variants (comma list, default below), --budget / --min-left seconds, --short / --full / --defaults
steps (P,D,S; --defaults empty = the model's own 16,16,4), --folder, --work (images, child results),
--compile-backend (inductor on the GPU; eager / aot_eager check the tracing quickly on a CPU).

Packages there: torch, transformers 5.x, typer, rich, safetensors, pillow, numpy, huggingface-hub are in the device
image; open_clip_torch, ftfy, wcwidth and diffusers travel as wheels (gpu_karlo.sh). Not checked before the first
GPU run: diffusers 0.42.1 with the device's transformers (5.17 when KINDS.md was read; our tests run 5.24), and
open_clip 3.3.0 with its torch 2.11 / torchvision 0.26 (ours: torch 2.14, torchvision 0.29). Both transformers
are past 5.6, which flattened CLIPTextModel (CLIPTextModelWithProjection keeps `text_model.`, so `make`'s key names
and diffusers' use of it should not differ between them). A diffusers failure is recorded and the unclip variants
still run (pixel distances to diffusers are then missing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
for _p in (str(ROOT / "src"), str(HERE.parent)):  # our package from the tree; bench_karlo beside this file
    if _p not in sys.path:
        sys.path.insert(0, _p)

PROMPT = "a high-resolution photograph of a big red frog on a green leaf"  # bench_karlo's and bench_speed's
GB = 2**30
DEFAULT_VARIANTS = "diffusers:fp16,unclip:fp16,unclip:bf16,tune:fp16,cli:fp16,compile:fp16:default"
FULL_BYTES, REDUCED_BYTES = 13.8e9, 0.3e9  # what `make` writes
NETS = ("prior", "decoder", "sr256", "sr256_last")  # the networks the tuned / compiled phases change


# Parent: the plan, the budget, the results -------------------------------------------------------------------
def steps_of(text: str | None) -> list[int] | None:
    if not text:
        return None
    p, d, s = (int(x) for x in text.split(","))
    return [p, d, s]


def settings_of(a) -> dict:
    return {"short": {"steps": steps_of(a.short), "sampler": "ddpm", "spacing": "uniform"},
            "karlo": {"steps": steps_of(a.full), "sampler": "ddpm", "spacing": "uniform"},
            # None: the model's defaults (folder.DEFAULTS: dpmpp_2m_sde, logsnr, 16/16/4)
            "defaults": {"steps": steps_of(a.defaults), "sampler": None, "spacing": None}}


def parse_variant(v: str) -> dict:
    parts = v.split(":")
    kind = parts[0]
    if kind not in ("diffusers", "unclip", "tune", "cli", "compile") or len(parts) < 2:
        raise SystemExit(f"unknown variant {v!r}: diffusers:DTYPE, unclip:DTYPE, tune:DTYPE, cli:DTYPE or "
                         "compile:DTYPE:MODE")
    if parts[1] not in ("fp32", "fp16", "bf16"):
        raise SystemExit(f"variant {v!r}: the dtype is fp32, fp16 or bf16")
    return {"name": v, "kind": kind, "dtype": parts[1], "mode": parts[2] if len(parts) > 2 else "default"}


def pick_folder(reduced: bool) -> Path:
    need = (REDUCED_BYTES if reduced else FULL_BYTES) * 1.2
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and shutil.disk_usage(shm).free > need:
            return shm / ("karlo-random-reduced" if reduced else "karlo-random")
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / ("karlo-random-reduced" if reduced else "karlo-random")


def package_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("torch", "diffusers", "transformers", "open_clip_torch", "torchvision", "timm", "huggingface_hub",
                 "safetensors", "numpy", "tokenizers", "ftfy", "typer", "rich", "triton"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src", "benchmarks"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+changes" if dirty.strip() else "") if rev else "unknown (no git here)"


class Clock:
    """Seconds since the parent started, and what is left of the budget."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.monotonic(), budget

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def say(clock: Clock, text: str) -> None:
    print(f"[{clock.elapsed():6.1f} s] {text}", file=sys.stderr, flush=True)


RUNNING: list = []  # the child in flight, killed with its process group if the parent is stopped


def _kill(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(signum, frame) -> None:
    for p in RUNNING:
        _kill(p)
    raise SystemExit(128 + signum)


def run_process(cmd: list[str], timeout: float, env: dict | None = None, capture: bool = False) -> dict:
    """Run a child in its own process group (inductor's compile workers die with it on a timeout)."""
    t = time.perf_counter()
    env = {**os.environ, **(env or {}), "GPU_KARLO_LAUNCH": repr(time.time())}
    p = subprocess.Popen(cmd, env=env, start_new_session=True, text=True,
                         stdout=subprocess.PIPE if capture else None)
    RUNNING.append(p)
    timed_out = False
    try:
        out, _ = p.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(p)
        out, _ = p.communicate()
    finally:
        RUNNING.remove(p)
    return {"rc": p.returncode, "timed_out": timed_out, "wall_s": round(time.perf_counter() - t, 2),
            "stdout": out if capture else None}


def child_cmd(kind: str, a, v: dict | None, result: Path, **extra) -> list[str]:
    cmd = [sys.executable, str(HERE), "child", kind, str(a.folder), "--device", a.device, "--work", str(a.work),
           "--result", str(result), "--seed", str(a.seed), "--settings", json.dumps(settings_of(a)),
           "--compile-backend", a.compile_backend]
    if v is not None:
        cmd += ["--dtype", v["dtype"], "--name", v["name"]]
    if a.reduced:
        cmd.append("--reduced")
    for k, val in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(val)]
    return cmd


def read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_cli(a, v: dict, clock: Clock) -> dict:
    """The real command, twice: short steps with explicit fp16/ddpm flags, then the user's defaults (--dtype auto)."""
    settings = settings_of(a)
    out = {"runs": []}
    env = {"UNCLIP_QUIET": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                           os.environ.get("PYTHONPATH")]))}
    plan = [("short:cold", "short", ["--dtype", v["dtype"], "--sampler", "ddpm", "--spacing", "uniform",
                                      *_step_flags(settings["short"]["steps"])]),
            ("defaults auto", "defaults", ["--dtype", "auto", *_step_flags(settings["defaults"]["steps"])])]
    for run, setting, flags in plan:
        if clock.left() < a.min_left / 2:
            out["runs"].append({"run": run, "setting": setting, "skipped": "budget"})
            continue
        dest = a.work / f"cli-{run.replace(' ', '-').replace(':', '-')}"
        cmd = [sys.executable, "-m", "unclip_cli", "generate", PROMPT, "--model", str(a.folder), "--seed", str(a.seed),
               "--size", "256", "--device", a.device, "--prior-guidance", "4", "--decoder-guidance", "8",
               "-o", str(dest), "--json", *flags]
        r = run_process(cmd, clock.left(), env, capture=True)
        st = settings[setting]
        opts = {"sampler": st["sampler"] or "model default", "spacing": st["spacing"] or "model default"}
        if st["steps"]:
            opts.update(prior_steps=st["steps"][0], decoder_steps=st["steps"][1], sr_steps=st["steps"][2])
        rec = {"run": run, "setting": setting, "phase": "cli", "command": " ".join(cmd[1:]), "opts": opts,
               "whole_command_s": r["wall_s"], "rc": r["rc"], "timed_out": r["timed_out"]}
        if r["rc"] == 0:
            try:
                info = json.loads(r["stdout"].strip().splitlines()[-1])
                rec["stage_s"] = info.get("timings")
                import numpy as np
                from PIL import Image

                npy = a.work / f"{_safe(v['name'])}__{_safe(run)}.npy"
                np.save(npy, np.asarray(Image.open(info["images"][0]["path"]).convert("RGB")))
                rec["image"] = str(npy)
            except (ValueError, KeyError, IndexError, OSError) as e:
                rec["error"] = f"reading the command's JSON: {e}"
        out["runs"].append(rec)
        say(clock, f"  cli {run}: rc {r['rc']}, whole command {r['wall_s']:.1f} s, stages {rec.get('stage_s')}")
    return out


def _step_flags(steps) -> list[str]:
    if not steps:
        return []
    return ["--prior-steps", str(steps[0]), "--decoder-steps", str(steps[1]), "--sr-steps", str(steps[2])]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def levels(a_path: str, b_path: str) -> dict | None:
    import numpy as np

    try:
        a, b = np.load(a_path).astype(int), np.load(b_path).astype(int)
    except (OSError, ValueError):
        return None
    if a.shape != b.shape:
        return {"error": f"shapes {a.shape} and {b.shape}"}
    d = np.abs(a - b)
    return {"mean": round(float(d.mean()), 3), "max": int(d.max()), "share_over_1": round(float((d > 1).mean()), 5)}


def distances(results: dict) -> None:
    """Fill each run's "vs": against the first diffusers variant (same steps, DDPM; on the GPU diffusers:fp16), the
    first unclip variant (unclip:fp16: for bf16, the CLI and the resident eager runs), and the same process's eager
    run (tuned / compiled phases)."""
    variants = results["variants"]
    names = [v["name"] for v in map(parse_variant, results["args"]["variants"].split(",")) if v]
    ref_d = next((n for n in names if n.startswith("diffusers:")), None)
    ref_u = next((n for n in names if n.startswith("unclip:")), None)
    results["references"] = {"diffusers": ref_d, "ours": ref_u}

    def images(name: str | None, phase: str | None = None) -> dict:
        out = {}
        for r in variants.get(name, {}).get("runs", []) if name else []:
            if r.get("image") and (phase is None or r.get("phase") == phase):
                out.setdefault(r["setting"], r["image"])
        return out

    ref_diffusers, ref_ours = images(ref_d), images(ref_u)
    for name, var in variants.items():
        eager = images(name, "eager")
        for r in var.get("runs", []):
            if not r.get("image"):
                continue
            vs = {}
            ddpm = r.get("opts", {}).get("sampler", "ddpm") == "ddpm" and r["setting"] != "defaults"
            if name != ref_d and ddpm and r["setting"] in ref_diffusers:
                vs["diffusers"] = levels(r["image"], ref_diffusers[r["setting"]])
            if name != ref_u and r.get("phase") in ("stagewise", "eager", "cli") and r["setting"] in ref_ours:
                vs["ours"] = levels(r["image"], ref_ours[r["setting"]])
            if r.get("phase") not in ("eager", "stagewise", "cli", "loaded") and r["setting"] in eager:
                vs["own eager"] = levels(r["image"], eager[r["setting"]])
            r["vs"] = {k: v for k, v in vs.items() if v is not None}


def write(out: Path, results: dict) -> None:
    """JSON and markdown; a bug in the distances or the table costs only that part, never the JSON."""
    try:
        distances(results)
    except Exception as e:
        results["distances_error"] = f"{type(e).__name__}: {e}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gpu_karlo.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(out / "gpu_karlo.json")
    try:
        text = markdown(results)
    except Exception as e:
        text = f"markdown failed ({type(e).__name__}: {e}); see gpu_karlo.json"
    (out / "gpu_karlo.md").write_text(text + "\n")


def _f(x, digits=2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def markdown(results: dict) -> str:
    env, refs = results.get("env", {}), results.get("references", {})
    lines = [f"# gpu_karlo: {env.get('device_name', results['args']['device'])}, "
             f"{'reduced' if results['args']['reduced'] else 'full'} Karlo layout (random weights)", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, packages {results.get('packages')}, "
             f"git {results.get('git')}; prompt '{PROMPT}', seed {results['args']['seed']}, 256x256, guidance 4 / 8.",
             ""]
    mk = results.get("make", {})
    lines.append(f"make: {mk.get('status')} in {_f(mk.get('wall_s'), 1)} s "
                 f"({_f((mk.get('bytes') or 0) / 1e9, 2)} GB in {results['args'].get('folder')}); "
                 f"elapsed at the end {_f(results.get('elapsed_s'), 1)} s of budget {results['args']['budget']} s.")
    lines += ["", "Stage seconds: CUDA-synchronised, sampling only (unclip stage by stage: the upsampler's includes "
              "loading "
              "its last-step network unless noted; diffusers: first to last network call of the stage).", "",
              "| variant | phase | run | steps, sampler | generate s | prior s | decoder s | upsampler s | loads s | "
              f"peak GPU GB alloc / reserved | since launch s | vs {refs.get('diffusers')}: mean / max levels | "
              f"vs {refs.get('ours')} | vs own eager |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, var in results["variants"].items():
        if var.get("skipped"):
            lines.append(f"| {name} | | skipped: {var['skipped']} | | | | | | | | | | | |")
            continue
        if var.get("error") and not var.get("runs"):
            lines.append(f"| {name} | | failed: {str(var['error'])[:200]} | | | | | | | | | | | |")
            continue
        for r in var.get("runs", []):
            if r.get("skipped"):
                lines.append(f"| {name} | {r.get('phase', '')} | {r['run']} | skipped: {r['skipped']} "
                             "| | | | | | | | | | |")
                continue
            if r.get("error") and not r.get("image"):
                lines.append(f"| {name} | {r.get('phase', '')} | {r['run']} | error: {str(r['error'])[:200]} "
                             "| | | | | | | | | | |")
                continue
            o = r.get("opts", {})
            steps = "/".join(str(x) for x in (o.get("prior_steps"), o.get("decoder_steps"), o.get("sr_steps")))
            st = r.get("stage_s") or {}
            pick = lambda k: st[k]["window_s"] if isinstance(st.get(k), dict) else st.get(k)  # noqa: E731
            sr = pick("sr256")
            pk = r.get("peak_gb") or {}
            vs = r.get("vs", {})
            cell = lambda k: f"{vs[k]['mean']} / {vs[k]['max']}" if vs.get(k) and "mean" in vs[k] else ""  # noqa: E731
            gen = r.get("generate_s")
            launch = r.get("since_launch_s", r.get("whole_command_s"))  # the CLI: the whole command
            lines.append(f"| {name} | {r.get('phase', '')} | {r['run']} | {steps} {o.get('sampler', '')} | {_f(gen)} | "
                         f"{_f(pick('prior'))} | {_f(pick('decoder'))} | {_f(sr)} | {_f(r.get('loads_s'))} | "
                         f"{_f(pk.get('alloc_gb'))} / {_f(pk.get('reserved_gb'))} | {_f(launch, 1)} | "
                         f"{cell('diffusers')} | {cell('ours')} | {cell('own eager')} |")
    lines += ["", "Per variant (process): exit status, seconds, loading, host peak RSS, what was tuned or compiled:",
              ""]
    for name, var in results["variants"].items():
        extra = {k: var[k] for k in ("rc", "timed_out", "wall_s", "skipped", "error", "imports_done_since_launch_s",
                                     "load_s", "preload_s", "weights_gb", "peak_rss_gb", "compile", "tokenizer_error")
                 if var.get(k) not in (None, {}, [])}
        lines.append(f"- {name}: {json.dumps(extra)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    if (argv or sys.argv[1:])[:1] == ["child"]:
        return child_main((argv or sys.argv[1:])[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for gpu_karlo.json and gpu_karlo.md ($OUT on the device)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reduced", action="store_true", help="bench_karlo's reduced layout (~50 M parameters)")
    ap.add_argument("--folder", type=Path, default=None, help="the weights (default: /dev/shm or /tmp karlo-random)")
    ap.add_argument("--work", type=Path, default=None, help="images and child results (default: a temp folder)")
    ap.add_argument("--budget", type=float, default=510.0, help="seconds for everything (default 510)")
    ap.add_argument("--min-left", type=float, default=40.0, help="no variant starts with fewer seconds left")
    ap.add_argument("--short", default="3,3,2", help="short steps P,D,S (default 3,3,2, as bench_speed)")
    ap.add_argument("--full", default="25,25,7", help="Karlo's steps (default 25,25,7)")
    ap.add_argument("--defaults", default="", help="steps for our default sampler (default: the model's, 16,16,4)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    clock = Clock(a.budget)
    variants = [parse_variant(v) for v in a.variants.split(",") if v]
    a.folder = (a.folder or pick_folder(a.reduced)).expanduser().resolve()
    a.work = (a.work or Path(tempfile.mkdtemp(prefix="gpu_karlo-"))).expanduser().resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    results = {"args": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}},
               "packages": package_versions(), "git": git_revision(), "python": sys.version.split()[0],
               "settings": settings_of(a), "make": {}, "variants": {}, "env": {}}
    signal.signal(signal.SIGTERM, _stop)
    try:
        say(clock, f"weights: {a.folder}; work: {a.work}; budget {a.budget:.0f} s; variants {a.variants}")
        res = a.work / "make.json"
        r = run_process(child_cmd("make", a, None, res), clock.left())
        results["make"] = {**read_result(res), "rc": r["rc"], "timed_out": r["timed_out"], "wall_s": r["wall_s"]}
        results["env"] = results["make"].pop("env", {})
        write(a.out, results)
        say(clock, f"make: {results['make'].get('status')} in {r['wall_s']:.1f} s")
        if r["rc"] != 0:
            say(clock, "make failed: nothing else can run")
            return 1
        for v in variants:
            left = clock.left()
            if left < a.min_left:
                results["variants"][v["name"]] = {"skipped": f"budget: {left:.0f} s left"}
                say(clock, f"{v['name']}: skipped ({left:.0f} s left)")
                continue
            say(clock, f"{v['name']}: starting ({left:.0f} s left)")
            if v["kind"] == "cli":
                t = time.perf_counter()
                results["variants"][v["name"]] = {**run_cli(a, v, clock), "wall_s": round(time.perf_counter() - t, 1)}
            else:
                res = a.work / f"{_safe(v['name'])}.json"
                extra = {}
                if v["kind"] == "tune":
                    extra["opts"] = "cudnn_benchmark,cuda_graphs"
                elif v["kind"] == "compile":
                    extra["opts"] = f"compile={v['mode']}"
                kind = {"tune": "resident", "compile": "resident"}.get(v["kind"], v["kind"])
                r = run_process(child_cmd(kind, a, v, res, **extra), clock.left())
                var = {**read_result(res), "rc": r["rc"], "timed_out": r["timed_out"], "wall_s": r["wall_s"]}
                if r["timed_out"]:
                    var["error"] = f"killed at the budget after {r['wall_s']:.0f} s (partial results kept)"
                elif r["rc"] != 0 and not var.get("error"):
                    var["error"] = f"exit status {r['rc']}"
                results["variants"][v["name"]] = var
            results["elapsed_s"] = round(clock.elapsed(), 1)
            write(a.out, results)
            say(clock, f"{v['name']}: done ({results['variants'][v['name']].get('error') or 'ok'})")
    finally:
        results["elapsed_s"] = round(clock.elapsed(), 1)
        write(a.out, results)
        say(clock, f"results in {a.out / 'gpu_karlo.json'} and gpu_karlo.md")
    print(markdown(results), flush=True)
    return 0


# Children -----------------------------------------------------------------------------------------------------
def child_main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("make", "diffusers", "unclip", "resident"))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--name", default="")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--settings", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reduced", action="store_true")
    ap.add_argument("--opts", default="")
    ap.add_argument("--compile-backend", default="inductor")
    a = ap.parse_args(argv)
    a.settings = json.loads(a.settings)
    out = Result(a.result, kind=a.kind, name=a.name, device=a.device, dtype=a.dtype)
    try:
        run = {"make": child_make, "diffusers": child_diffusers, "unclip": child_unclip, "resident": child_resident}
        run[a.kind](a, out)
    except BaseException as e:  # recorded, then the exit status says so
        out.data["error"] = f"{type(e).__name__}: {e}"[:2000]
        out.data["peak_rss_gb"] = peak_rss_gb()
        out.data["traceback"] = traceback.format_exc()[-4000:]
        out.save()
        traceback.print_exc()
        return 1
    out.data["peak_rss_gb"] = peak_rss_gb()
    out.save()
    return 0


def peak_rss_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KB on Linux


class Result:
    """A child's results, rewritten (atomically) after every run."""

    def __init__(self, path: Path, **head):
        self.path, self.data = path, {**head, "runs": []}

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)

    def add(self, run: dict) -> None:
        self.data["runs"].append(run)
        self.save()


def since_launch() -> float | None:
    try:
        return round(time.time() - float(os.environ["GPU_KARLO_LAUNCH"]), 2)
    except (KeyError, ValueError):
        return None


def keep(a, out: Result, rec: dict) -> None:
    """Add a run to the child's results (the process's first run also gets its seconds since launch) and log it."""
    if not out.data["runs"]:
        rec["since_launch_s"] = since_launch()
    out.add(rec)
    log(a, _summary(rec))


def log(a, text: str) -> None:
    print(f"  [{a.name or a.kind}] {text}", file=sys.stderr, flush=True)


class Gpu:
    """Synchronisation and peak memory on CUDA; no-ops elsewhere."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.on = torch.device(device).type == "cuda"

    def sync(self) -> None:
        if self.on:
            self.torch.cuda.synchronize()

    def reset(self) -> None:
        if self.on:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_alloc(self) -> float:
        return self.torch.cuda.max_memory_allocated() / GB if self.on else 0.0

    def peak(self) -> dict:
        if not self.on:
            return {}
        return {"alloc_gb": round(self.torch.cuda.max_memory_allocated() / GB, 3),
                "reserved_gb": round(self.torch.cuda.max_memory_reserved() / GB, 3)}


def env_info(device: str) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count()}
    if torch.device(device).type == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(device_name=p.name, device_memory_gb=round(p.total_memory / GB, 1),
                   multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version())
    return out


def child_make(a, out: Result) -> None:
    """bench_karlo.make, with the values drawn on the GPU when there is one (same scaling as its _fill)."""
    import torch

    import bench_karlo as bk

    out.data["env"] = env_info(a.device)
    folder = a.folder
    if bk.complete(folder, a.reduced):
        out.data.update(status="reused", folder=str(folder),
                        bytes=sum(f.stat().st_size for f in folder.rglob("*.safetensors")))
        return
    dev = torch.device(a.device)
    if dev.type == "cuda":
        bk._fill = gpu_fill(dev)  # write_safetensors looks _fill up at call time
    plain_tokenizer = bk.tokenizer

    def guarded_tokenizer():
        try:
            return plain_tokenizer()
        except Exception as e:  # diffusers needs it, unclip does not: record and go on
            out.data["tokenizer_error"] = f"{type(e).__name__}: {e}"[:1000]
            print(f"tokenizer failed ({e}); the diffusers variant will fail, unclip's run", file=sys.stderr, flush=True)
            return _NoTokenizer()

    bk.tokenizer = guarded_tokenizer
    t = time.perf_counter()
    made = bk.make(folder, a.reduced, a.seed)
    out.data.update(status="made", folder=str(folder), bytes=made["bytes"], files=made["files"],
                    make_s=round(time.perf_counter() - t, 2), fill_on=dev.type)


class _NoTokenizer:
    def save_pretrained(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)


def gpu_fill(device):
    """bench_karlo._fill's values, drawn on `device` (a CUDA generator per tensor, seeded as there)."""
    import torch

    def fill(name: str, shape: tuple, seed: int):
        if name.endswith("position_ids"):
            return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
        g = torch.Generator(device=device).manual_seed(seed)
        if name == "clip_std":
            return (0.2 + 0.4 * torch.rand(shape, generator=g, device=device)).cpu()
        x = torch.randn(shape, generator=g, device=device)
        if len(shape) >= 2:
            x = x / math.sqrt(math.prod(shape[1:]))
        else:
            x = 1.0 + 0.1 * x if name.endswith("weight") else 0.1 * x
        return x.cpu()

    return fill


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _image_path(a, run: str) -> Path:
    return a.work / f"{_safe(a.name or a.kind)}__{_safe(run)}.npy"


# diffusers ----------------------------------------------------------------------------------------------------
class DiffusersClock:
    """Forward hooks on the pipeline's components: per stage, first call to last call (synchronised), the sum of
    the network calls, and the stage's peak GPU memory (reset at its first call)."""

    GROUPS = {"text_encoder": "clip", "prior": "prior", "text_proj": "decoder", "decoder": "decoder",
              "super_res_first": "sr256", "super_res_last": "sr256"}

    def __init__(self, pipe, gpu: Gpu):
        self.gpu = gpu
        for comp, group in self.GROUPS.items():
            module = getattr(pipe, comp)
            module.register_forward_pre_hook(lambda m, args, c=comp: self.pre(c))
            module.register_forward_hook(lambda m, args, o, c=comp: self.post(c))
        self.begin()

    def begin(self) -> None:
        self.stages, self.current, self.started, self.overall = {}, None, {}, 0.0

    def pre(self, comp: str) -> None:
        self.gpu.sync()
        now, group = time.perf_counter(), self.GROUPS[comp]
        if group != self.current:
            self._close()
            self.current = group
            self.gpu.reset()
            self.stages.setdefault(group, {"start": now, "net_s": 0.0, "calls": 0})
        self.started[comp] = now

    def post(self, comp: str) -> None:
        self.gpu.sync()
        now, s = time.perf_counter(), self.stages[self.GROUPS[comp]]
        s["net_s"] += now - self.started[comp]
        s["calls"] += 1
        s["end"] = now

    def _close(self) -> None:
        if self.current is not None:
            peak = self.gpu.peak_alloc()
            self.stages[self.current]["peak_alloc_gb"] = round(peak, 3)
            self.overall = max(self.overall, peak)

    def finish(self) -> dict:
        self._close()
        self.current = None
        return {g: {"window_s": round(s.get("end", s["start"]) - s["start"], 4), "net_s": round(s["net_s"], 4),
                    "calls": s["calls"], **({"peak_alloc_gb": s["peak_alloc_gb"]} if "peak_alloc_gb" in s else {})}
                for g, s in self.stages.items()}


def child_diffusers(a, out: Result) -> None:
    import numpy as np
    import torch

    from bench_karlo import diffusers_classes, diffusers_pipeline

    gpu, dev, dtype = Gpu(a.device), torch.device(a.device), getattr(torch, DTYPES[a.dtype])
    out.data["imports_done_since_launch_s"] = since_launch()
    parts, loads = {}, {}
    for folder, cls in diffusers_classes().items():
        t = time.perf_counter()
        m = cls.from_pretrained(a.folder / folder, torch_dtype=dtype)
        t1 = time.perf_counter()
        parts[folder] = m.to(dev).eval()
        gpu.sync()
        loads[folder] = {"read_s": round(t1 - t, 3), "to_device_s": round(time.perf_counter() - t1, 3)}
    out.data["load_s"] = round(sum(v["read_s"] + v["to_device_s"] for v in loads.values()), 2)
    out.data["loads"] = loads
    out.data["weights_gb"] = round(torch.cuda.memory_allocated() / GB, 3) if gpu.on else None
    log(a, f"loaded in {out.data['load_s']} s")
    pipe = diffusers_pipeline(a.folder, parts)
    clock = DiffusersClock(pipe, gpu)
    for run, setting in (("short:cold", "short"), ("karlo", "karlo"), ("short", "short")):
        p, d, s = a.settings[setting]["steps"]
        clock.begin()
        gpu.sync()
        gpu.reset()
        t = time.perf_counter()
        with torch.no_grad():
            image = pipe(PROMPT, prior_num_inference_steps=p, decoder_num_inference_steps=d,
                         super_res_num_inference_steps=s, prior_guidance_scale=4.0, decoder_guidance_scale=8.0,
                         generator=torch.Generator().manual_seed(a.seed), output_type="np").images[0]
        gpu.sync()
        wall = time.perf_counter() - t
        stages = clock.finish()
        npy = _image_path(a, run)
        np.save(npy, (image * 255).round().clip(0, 255).astype(np.uint8))
        rec = {"run": run, "setting": setting, "phase": "loaded", "generate_s": round(wall, 3), "stage_s": stages,
               "opts": {"prior_steps": p, "decoder_steps": d, "sr_steps": s, "sampler": "ddpm", "spacing": "uniform"},
               "peak_gb": {**gpu.peak(), "alloc_gb": round(max(clock.overall, gpu.peak_alloc()), 3)} if gpu.on else {},
               "finite": bool(np.isfinite(image).all()), "image": str(npy)}
        keep(a, out, rec)


# unclip -------------------------------------------------------------------------------------------------------
class StageClock:
    """The cascade's report(stage, done, total): each stage's sampling, synchronised at its first and last step,
    and its peak GPU memory (reset at its first step, after its load); the run's overall peak across resets."""

    def __init__(self, gpu: Gpu):
        self.gpu, self.stages, self.overall, self._start = gpu, {}, 0.0, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if done == 0:
            self.gpu.sync()
            self.overall = max(self.overall, self.gpu.peak_alloc())
            self.gpu.reset()
            self._start[stage] = time.perf_counter()
        elif done == total:
            self.gpu.sync()
            now = time.perf_counter()
            peak = self.gpu.peak_alloc()
            self.overall = max(self.overall, peak)
            s = self.stages.setdefault(stage, {"window_s": 0.0, "steps": 0})
            s["window_s"] = round(s["window_s"] + now - self._start[stage], 4)
            s["steps"] += total
            s["start"], s["end"] = self._start[stage], now
            if self.gpu.on:
                s["peak_alloc_gb"] = round(peak, 3)


class NetClock:
    """Forward hooks (synchronised) summing each network's call seconds; eager modules only."""

    def __init__(self, gpu: Gpu):
        self.gpu, self.sums, self._t = gpu, {}, {}

    def attach(self, name: str, module) -> None:
        module.register_forward_pre_hook(lambda m, args, n=name: self._pre(n))
        module.register_forward_hook(lambda m, args, o, n=name: self._post(n))

    def _pre(self, n: str) -> None:
        self.gpu.sync()
        self._t[n] = time.perf_counter()

    def _post(self, n: str) -> None:
        self.gpu.sync()
        s = self.sums.setdefault(n, {"net_s": 0.0, "calls": 0})
        s["net_s"] = round(s["net_s"] + time.perf_counter() - self._t[n], 4)
        s["calls"] += 1

    def take(self) -> dict:
        out, self.sums = self.sums, {}
        return out


def instrument_loads(stages, gpu: Gpu, nets: NetClock | None) -> list:
    """Time every stage load (read, cast, to the device), and hook the built module's calls."""
    loads = []
    build = stages._build

    def timed(stage, files):
        gpu.sync()
        t = time.perf_counter()
        module = build(stage, files)
        gpu.sync()
        loads.append((stage, t, time.perf_counter()))
        if nets is not None and stage != "clip":  # CLIP runs through its submodules, not forward
            nets.attach(stage, module)
        return module

    stages._build = timed
    return loads


def unclip_run(a, stages, setting: str, gpu: Gpu, loads: list | None = None, nets: NetClock | None = None,
               run: str = "", phase: str = "") -> dict:
    import numpy as np

    from unclip_cli import options
    from unclip_cli.cli import run as runner
    from unclip_cli.pipeline import cascade, images

    s = a.settings[setting]
    given = {"prior_guidance": 4.0, "decoder_guidance": 8.0}
    if s["steps"]:
        given.update(prior_steps=s["steps"][0], decoder_steps=s["steps"][1], sr_steps=s["steps"][2])
    if s["sampler"]:
        given.update(sampler=s["sampler"], spacing=s["spacing"])
    opts = options.resolve(stages.spec.defaults, given, 256)
    clock = StageClock(gpu)
    n_loads = len(loads) if loads is not None else 0
    gpu.sync()
    gpu.reset()
    t = time.perf_counter()
    x = cascade.generate(stages, [PROMPT], opts, runner.generators([a.seed]), clock, one_by_one=True)
    gpu.sync()
    wall = time.perf_counter() - t
    clock.overall = max(clock.overall, gpu.peak_alloc())
    image = np.asarray(images.to_pil(x)[0])
    npy = _image_path(a, run)
    np.save(npy, image)
    stage_s = {}
    for name, st in clock.stages.items():
        inside = [e - b for (_, b, e) in (loads or [])[n_loads:] if st["start"] <= b <= st["end"]]
        stage_s[name] = {k: v for k, v in st.items() if k not in ("start", "end")}
        if inside:  # the upsampler's last-step network, loaded inside its loop
            stage_s[name]["load_inside_s"] = round(sum(inside), 4)
            stage_s[name]["sample_s"] = round(st["window_s"] - sum(inside), 4)
    rec = {"run": run, "setting": setting, "phase": phase, "generate_s": round(wall, 3), "stage_s": stage_s,
           "opts": {k: getattr(opts, k) for k in ("prior_steps", "decoder_steps", "sr_steps", "sampler", "spacing")},
           "finite": bool(torch_isfinite(x)), "image": str(npy)}
    if gpu.on:
        rec["peak_gb"] = {**gpu.peak(), "alloc_gb": round(clock.overall, 3)}
    if loads is not None:
        mine = loads[n_loads:]
        rec["loads"] = {st: round(e - b, 3) for st, b, e in mine}
        rec["loads_s"] = round(sum(e - b for _, b, e in mine), 3)
    if nets is not None:
        rec["net_s"] = nets.take()
    return rec


def torch_isfinite(x) -> bool:
    import torch

    return bool(torch.isfinite(x).all())


def _summary(rec: dict) -> str:
    st = rec.get("stage_s") or {}
    w = lambda k: f"{st[k]['window_s']:.2f}" if k in st else "-"  # noqa: E731
    pk = rec.get("peak_gb", {}).get("alloc_gb")
    return (f"{rec.get('phase', '')} {rec['run']}: generate {rec['generate_s']:.2f} s (prior {w('prior')}, decoder "
            f"{w('decoder')}, upsampler {w('sr256')}), loads {rec.get('loads_s', '-')}, peak {pk} GB")


def child_unclip(a, out: Result) -> None:
    """As `unclip generate` runs: stage by stage, each loaded when its turn comes and released after."""
    import torch

    from unclip_cli.pipeline import stages as stages_mod

    gpu = Gpu(a.device)
    out.data["imports_done_since_launch_s"] = since_launch()
    t = time.perf_counter()
    stages, _ = stages_mod.open_model(str(a.folder), torch.device(a.device), getattr(torch, DTYPES[a.dtype]), 256,
                                      keep_loaded=False)
    out.data["open_and_check_s"] = round(time.perf_counter() - t, 3)
    nets = NetClock(gpu)
    loads = instrument_loads(stages, gpu, nets)
    for run, setting in (("short:cold", "short"), ("karlo", "karlo"), ("defaults", "defaults"), ("short", "short")):
        rec = unclip_run(a, stages, setting, gpu, loads, nets, run, "stagewise")
        keep(a, out, rec)


# Every stage kept loaded: eager, then tuned (cudnn.benchmark, CUDA graphs) or compiled ---------------------------
class Graphed:
    """A module's forward replayed from a CUDA graph, one per input signature (shapes, dtypes, strides of the
    tensor arguments; values of the others). The inputs are copied into the graph's static tensors and the
    output is cloned, so callers may keep it. Off CUDA (a check of this bookkeeping on the CPU) nothing is
    captured: the forward runs eagerly on the static tensors.

    The decoder's attention keeps the context's keys/values between calls for the same context tensor
    (models/unet.py, `_context_kv`); a captured graph would then reuse them for the next image. The tuned
    phases therefore run under torch.inference_mode, where that cache is off (inference tensors are never
    cached) and every replay computes them from the static context."""

    def __init__(self, module, cuda: bool):
        self.fn = type(module).forward.__get__(module)
        self.cuda, self.graphs, self.captures, self.replays = cuda, {}, 0, 0

    @staticmethod
    def _sig(v):
        import torch

        if isinstance(v, torch.Tensor):
            return ("T", tuple(v.shape), v.dtype, v.device, v.stride())
        return ("V", v)

    def _call(self, n: int, names: list, flat: list):
        return self.fn(*flat[:n], **dict(zip(names, flat[n:])))

    def __call__(self, *args, **kw):
        import torch

        names = list(kw)
        flat = [*args, *(kw[k] for k in names)]
        key = (len(args), tuple(names), tuple(self._sig(v) for v in flat))
        if key not in self.graphs:
            self.graphs[key] = self._capture(len(args), names, flat)
        graph, static, out = self.graphs[key]
        for s, v in zip(static, flat):
            if isinstance(s, torch.Tensor):
                s.copy_(v)
        if graph is None:
            out = self._call(len(args), names, static)
        else:
            graph.replay()
        self.replays += 1
        return out.clone()

    def _capture(self, n: int, names: list, flat: list):
        import torch

        static = [v.clone() if isinstance(v, torch.Tensor) else v for v in flat]
        if not self.cuda:
            return None, static, None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN/cuBLAS choices, lazy inits)
            for _ in range(2):
                self._call(n, names, static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._call(n, names, static)
        self.captures += 1
        return graph, static, out


def apply_opt(a, opt: str, stages, gpu: Gpu) -> dict:
    import torch

    info = {"opt": opt}
    if opt == "cudnn_benchmark":
        torch.backends.cudnn.benchmark = True
        info["applied"] = gpu.on
    elif opt == "cuda_graphs":
        info["graphed"] = []
        for stage in NETS:
            if stages.has(stage):
                m = stages.get(stage)
                m.forward = Graphed(m, gpu.on)
                info["graphed"].append(stage)
        info["emulated"] = not gpu.on
    elif opt.startswith("compile="):
        mode = opt.split("=", 1)[1]
        kw = {"backend": a.compile_backend, "dynamic": False}
        import torch._dynamo

        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 32))
        if a.compile_backend == "inductor" and mode != "default":
            kw["mode"] = mode
        for stage in NETS:
            if stages.has(stage):
                stages.get(stage).compile(**kw)
        info["kwargs"] = {k: str(v) for k, v in kw.items()}
    else:
        raise ValueError(f"unknown optimisation {opt!r}")
    return info


def child_resident(a, out: Result) -> None:
    """Every stage loaded once and kept: eager runs (no_grad, as the CLI), then each optimisation in turn
    (cumulative, under inference_mode), each at the short (first: warm-up / capture / compilation), Karlo and
    default settings."""
    import torch

    from unclip_cli.pipeline import stages as stages_mod

    gpu = Gpu(a.device)
    out.data["imports_done_since_launch_s"] = since_launch()
    stages, _ = stages_mod.open_model(str(a.folder), torch.device(a.device), getattr(torch, DTYPES[a.dtype]), 256,
                                      keep_loaded=True)
    pre = {}
    for stage in stages.paths:
        gpu.sync()
        t = time.perf_counter()
        stages.get(stage)
        gpu.sync()
        pre[stage] = round(time.perf_counter() - t, 3)
    out.data["preload_s"] = pre
    out.data["weights_gb"] = round(torch.cuda.memory_allocated() / GB, 3) if gpu.on else None
    out.save()
    log(a, f"preloaded in {sum(pre.values()):.1f} s")
    plan = (("short:warmup", "short"), ("karlo", "karlo"), ("defaults", "defaults"))
    for run, setting in plan:
        rec = unclip_run(a, stages, setting, gpu, run=run, phase="eager")
        out.add(rec)
        log(a, _summary(rec))
    out.data["compile"] = {}
    for opt in filter(None, a.opts.split(",")):
        info = apply_opt(a, opt, stages, gpu)
        phase = opt.replace("=", ":")
        for run, setting in plan:
            try:
                with torch.inference_mode():
                    if opt.startswith("compile="):
                        _dynamo_reset_counters()
                    rec = unclip_run(a, stages, setting, gpu, run=run, phase=phase)
                    if opt.startswith("compile=") and run.endswith("warmup"):
                        info["dynamo"] = _dynamo_counters()
            except Exception as e:  # recorded; the next optimisation (if any) is not tried on a broken state
                out.add({"run": run, "setting": setting, "phase": phase, "error": f"{type(e).__name__}: {e}"[:2000],
                         "traceback": traceback.format_exc()[-3000:]})
                log(a, f"{phase} {run}: {type(e).__name__}: {str(e)[:300]}")
                out.data["compile"][phase] = info
                out.save()
                return
            out.add(rec)
            log(a, _summary(rec))
        if opt == "cuda_graphs":
            info["captures"] = {s: stages.get(s).forward.captures for s in NETS if stages.has(s)}
        out.data["compile"][phase] = info
        out.save()


def _dynamo_reset_counters() -> None:
    try:
        from torch._dynamo.utils import counters

        counters.clear()
    except Exception:
        pass


def _dynamo_counters() -> dict:
    try:
        from torch._dynamo.utils import counters

        breaks = dict(counters.get("graph_break", {}))
        return {"graph_breaks": sum(breaks.values()),
                "break_reasons": {k[:200]: v for k, v in list(breaks.items())[:10]},
                "unique_graphs": counters.get("stats", {}).get("unique_graphs")}
    except Exception as e:
        return {"error": str(e)}


if __name__ == "__main__":
    sys.exit(main())
