"""Gaussian diffusion math: the cosine schedule, respacing, and the closed forms samplers and training use.

Everything is a pure function over an immutable `Schedule`. Coefficients are float32 tensors computed
the way Karlo's runtime (diffusers' UnCLIPScheduler) computes them, so sampling matches it bit for bit
on the same inputs: betas from the cosine alpha-bar in float64 Python, cast to float32, then
alphas_cumprod = cumprod(1 - betas) in float32.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from unclip_cli.diffusion.spec import DiffusionSpec


@dataclass(frozen=True)
class Schedule:
    betas: torch.Tensor  # [T] float32
    alphas_cumprod: torch.Tensor  # [T] float32

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def cosine_schedule(num_timesteps: int = 1000, max_beta: float = 0.999) -> Schedule:
    """The "squaredcos_cap_v2" schedule of Improved DDPM (Nichol & Dhariwal 2021)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    betas = torch.tensor(betas, dtype=torch.float32)
    return Schedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))


@lru_cache(maxsize=8)
def _cosine(num_timesteps: int) -> Schedule:
    return cosine_schedule(num_timesteps)


def schedule_of(spec: DiffusionSpec) -> Schedule:
    """The noise schedule a stage was trained with (built once per length)."""
    if spec.schedule != "cosine":
        raise ValueError(f"unknown schedule {spec.schedule!r}")
    return _cosine(spec.num_timesteps)


def respace(num_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced timesteps, descending, from T-1 down to 0 (Karlo's `space_timesteps(T, "n")`)."""
    if steps < 1 or steps > num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    ratio = (num_timesteps - 1) / (steps - 1)
    return [int(t) for t in (np.arange(steps) * ratio).round()[::-1]]


SPACINGS = ("uniform", "logsnr")
LOGSNR_FLOOR = -5.0  # "logsnr" spacing starts its ramp here (SNR e^-5: signal 8% of the noise's std)


def spaced(schedule: Schedule, steps: int, spacing: str = "uniform") -> list[int]:
    """`steps` integer timesteps, descending from T-1 and ending at 0, placed by `spacing`:

    - "uniform": evenly in t (Karlo's respacing, `respace`);
    - "logsnr": T-1, then evenly in log-SNR (log abar / (1 - abar)) from LOGSNR_FLOOR (or the
      schedule's lowest, if higher) up to that of t = 0, as DPM-Solver's "logSNR" skip type. The cosine
      schedule's log-SNR changes fastest at both ends, where even-in-t steps take big jumps; its very
      last step (t = 999: log-SNR -19.8 against -12.9 at 998, from the capped beta) is pure noise, so
      the ramp starts at the floor instead (measured on Gaussian data against the 1000-step ODE
      solution: floors of -6 to -4 are best at 8-25 steps; the schedule's own -19.8 puts 3 of 10
      steps above t = 994).
    The networks know only integer timesteps: each point goes to the timestep of nearest log-SNR,
    moved down where two would coincide, so the result is strictly descending and `steps` long.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r} (one of: {', '.join(SPACINGS)})")
    T = schedule.num_timesteps
    if spacing == "uniform" or steps <= 2:
        return respace(T, steps)
    if steps > T:
        raise ValueError(f"steps must be between 1 and {T}, got {steps}")
    log_snr = _log_snr(schedule)
    return _logsnr_ramp(log_snr, T - 1, max(float(log_snr[T - 1]), LOGSNR_FLOOR), steps)


def _log_snr(schedule: Schedule) -> torch.Tensor:
    abar = schedule.alphas_cumprod.double()
    return torch.log(abar / (1 - abar))  # rising as t falls


def _logsnr_ramp(log_snr: torch.Tensor, first: int, lo: float, steps: int) -> list[int]:
    """`first`, then steps - 1 timesteps evenly in log-SNR from `lo` up to t = 0's, strictly descending."""
    hi = float(log_snr[0])
    out = [first]
    for i in range(1, steps):
        target = lo + (hi - lo) * i / (steps - 1)
        t = min(int(torch.argmin((log_snr - target).abs())), out[-1] - 1)
        out.append(max(t, steps - 1 - i))  # leave room for the steps still to come
    return out


def spaced_tail(schedule: Schedule, steps: int, strength: float, spacing: str = "uniform") -> list[int]:
    """img2img's timesteps: round(steps * strength) of them (at least 1), starting where the last that many of
    Karlo's even-in-t steps start (so a strength is the same noise level whatever the spacing), placed by
    `spacing` from there down to 0 (for "uniform": exactly that tail)."""
    uniform = spaced(schedule, steps, "uniform")
    tail = uniform[-max(1, round(len(uniform) * strength)):]
    if spacing == "uniform" or len(tail) <= 2:
        return tail
    if len(tail) == len(uniform):
        return spaced(schedule, steps, spacing)
    log_snr = _log_snr(schedule)
    return _logsnr_ramp(log_snr, tail[0], float(log_snr[tail[0]]), len(tail))


def alpha_bar_at(schedule: Schedule, t: int) -> torch.Tensor:
    """alpha-bar at integer t; 1 for t < 0 (the clean data)."""
    return schedule.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)


def step_betas(schedule: Schedule, t: int, prev: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta, alpha) of the respaced step t -> prev: beta = 1 - abar_t / abar_prev."""
    if prev == t - 1:
        return schedule.betas[t], 1.0 - schedule.betas[t]
    beta = 1 - schedule.alphas_cumprod[t] / alpha_bar_at(schedule, prev)
    return beta, 1 - beta


def x0_from_eps(schedule: Schedule, x_t: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    abar = schedule.alphas_cumprod[t]
    return (x_t - (1 - abar) ** 0.5 * eps) / abar**0.5


def x0_from_v(schedule: Schedule, x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
    """x0 from a v-prediction, v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).

    Unlike x0 from eps, this stays well conditioned at t = T-1 where abar ~ 2e-9: an eps model must
    be accurate to ~1e-4 there or its x0 saturates, which a small network is not.
    """
    abar = schedule.alphas_cumprod.to(x_t.device)[torch.as_tensor(t, device=x_t.device)]
    abar = abar.reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype) if abar.dim() else abar
    return abar**0.5 * x_t - (1 - abar) ** 0.5 * v


def v_target(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    abar = schedule.alphas_cumprod.to(x0.device)[t].reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return abar**0.5 * noise - (1 - abar) ** 0.5 * x0


def eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t: int, x0: torch.Tensor) -> torch.Tensor:
    abar = alpha_bar_at(schedule, t)
    return (x_t - abar**0.5 * x0) / (1 - abar) ** 0.5


def posterior_mean(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: int, prev: int) -> torch.Tensor:
    """Mean of q(x_prev | x_t, x0) for the respaced step t -> prev."""
    abar_t, abar_prev = schedule.alphas_cumprod[t], alpha_bar_at(schedule, prev)
    beta, alpha = step_betas(schedule, t, prev)
    c0 = abar_prev**0.5 * beta / (1 - abar_t)
    ct = alpha**0.5 * (1 - abar_prev) / (1 - abar_t)
    return c0 * x0 + ct * x_t


def posterior_log_variance(schedule: Schedule, t: int, prev: int, learned: torch.Tensor | None = None) -> torch.Tensor:
    """log Var of the step t -> prev: the posterior variance ("fixed small"), or with learned-range channels
    r in [-1, 1] the interpolation f log(beta) + (1 - f) log(posterior variance), f = (r + 1) / 2."""
    abar_t, abar_prev = schedule.alphas_cumprod[t], alpha_bar_at(schedule, prev)
    beta, _ = step_betas(schedule, t, prev)
    var = (1 - abar_prev) / (1 - abar_t) * beta
    if learned is None:
        return torch.log(torch.clamp(var, min=1e-20))
    frac = (learned + 1) / 2
    return frac * beta.log() + (1 - frac) * var.log()


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
    """Noise clean data x0 to timestep t (int or [B] tensor): sqrt(abar) x0 + sqrt(1 - abar) noise."""
    abar = schedule.alphas_cumprod.to(x0.device)[torch.as_tensor(t, device=x0.device)]
    abar = abar.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise
