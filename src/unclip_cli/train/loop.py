"""`unclip train STAGE`: train CLIP, the prior, the decoder or an upsampler from a TOML config.

One flat loop for every stage (AdamW, linear warm-up then cosine decay, gradient clipping, EMA);
what differs per stage is how a batch is made and scored (`tasks.py`). Checkpoints are safetensors:
`state.safetensors` (weights, EMA, optimizer; for resuming) and the exported EMA stage files with
their configs. Under `torchrun --nproc_per_node N` the same command trains with
DistributedDataParallel (NCCL on GPUs, gloo on CPU); rank 0 writes everything.
"""

import json
import math
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open

from unclip_cli.weights import checkpoint
from unclip_cli.errors import UnclipError


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    log_every: int = 25
    save_every: int = 250
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    export_dtype: str = "fp16"  # dtype of the exported stage files (fp16 halves the size)


def load_config(path: str | Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UnclipError(f"training config {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise UnclipError(f"training config {path} is not valid TOML: {e}") from None


def train_config(raw: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - names
    if unknown:
        raise UnclipError(f"[train] has unknown keys {sorted(unknown)}")
    return TrainConfig(**raw)


# Distributed ---------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return Dist(rank=rank, world=world, device=device)


def wrap_ddp(module: torch.nn.Module, d: Dist) -> torch.nn.Module:
    if d.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


# State ---------------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            ema[k].copy_(v)


def save_state(path: Path, step: int, model, ema, opt: torch.optim.Optimizer, extra: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.items()})
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for name, v in st.items():
            tensors[f"opt.{pid}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"step": str(step), "param_groups": json.dumps(opt_state["param_groups"]), "extra": json.dumps(extra)}
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def load_state(path: Path, model, ema, opt: torch.optim.Optimizer) -> int:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


# Loop ----------------------------------------------------------------------------------------


def run(stage: str, config_path: str | Path, out_dir: str | Path, *, resume: bool = True,
        log: Callable[[dict], None] | None = None) -> Path:
    """Train `stage` as the config says; returns the output folder."""
    from unclip_cli.train import tasks

    raw = load_config(config_path)
    cfg = train_config(raw.get("train", {}))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = setup_dist()
    out = Path(out_dir)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    task = tasks.make(stage, raw, Path(config_path).parent, d, seed=cfg.seed)
    model = task.module.to(d.device)
    net = wrap_ddp(model, d)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path = out / "state.safetensors"
    step = 0
    if resume and state_path.exists():
        step = load_state(state_path, model, ema, opt)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank + 7919 * step)
    t0, seen, logfile = time.perf_counter(), 0, out / "log.jsonl"
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        batch = task.batch(cfg.batch_size, gen)
        terms = task.loss(net, batch, gen)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        task.after_step(model)
        ema_update(ema, model, cfg.ema_decay if step >= cfg.warmup else 0.0)
        step += 1
        seen += cfg.batch_size * d.world
        if d.main and (step % cfg.log_every == 0 or step == cfg.steps):
            rec = {"step": step, **{k: round(float(v.detach()), 5) for k, v in terms.items()}, "grad_norm": round(float(gnorm), 4),
                   "lr": opt.param_groups[0]["lr"], "samples_per_s": round(seen / (time.perf_counter() - t0), 2),
                   "elapsed_s": round(time.perf_counter() - t0, 1)}
            with open(logfile, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if log:
                log(rec)
        if d.main and (step % cfg.save_every == 0 or step == cfg.steps):
            save_state(state_path, step, model, ema, opt, {"stage": stage})
            export(task, ema, out, cfg)
    if d.world > 1:
        _save_replica(model, out, d)
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return out


def export(task, ema: dict[str, torch.Tensor], out: Path, cfg: TrainConfig) -> None:
    """Write the EMA weights as the stage files the pipeline loads (config in the metadata)."""
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[cfg.export_dtype]
    for name, (kind, config, prefix, spec) in task.exports().items():
        sd = {k[len(prefix):]: v.to(dtype) if v.is_floating_point() else v for k, v in ema.items() if k.startswith(prefix)}
        checkpoint.save(out / f"{name}.safetensors", kind, config, sd, diffusion=spec, extra=task.extra(name))


def _save_replica(model, out: Path, d: Dist) -> None:
    # Each rank's final weights, so a test can check the replicas agree.
    if os.environ.get("UNCLIP_SAVE_REPLICAS"):
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(out / f"replica-{d.rank}.safetensors"))
