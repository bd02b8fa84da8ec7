"""Samplers: plain functions over a denoiser, sharing one signature.

A denoiser is a callable `denoise(x, t) -> Prediction` at an integer timestep t of the training
schedule; it returns the predicted clean sample x0 (already clamped if the stage clamps) and, for
networks with learned variance, the raw variance channels in [-1, 1]. `Denoiser` adapts a
network to that contract; `guided` adds classifier-free guidance. Samplers draw noise only from
the generators passed in (one per batch element, so image i is reproducible on its own) and know
nothing of text, CLIP, cascades or progress bars; `callback(i, t, x)` is called after every step.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from unclip_cli.diffusion import gaussian as D
from unclip_cli.diffusion.spec import DiffusionSpec


@dataclass
class Prediction:
    x0: torch.Tensor
    variance: torch.Tensor | None = None  # learned-range variance channels in [-1, 1], if the network has them


Denoise = Callable[[torch.Tensor, int], Prediction]
Callback = Callable[[int, int, torch.Tensor], None] | None
PostStep = Callable[[torch.Tensor, int], torch.Tensor] | None


def randn(shape: Sequence[int], generators: Sequence[torch.Generator], device, dtype) -> torch.Tensor:
    """Standard normal noise, one CPU generator per batch element, moved to device afterwards.

    Drawing on the CPU makes an image depend on its seed only, not on the device it runs on.
    """
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch element ({shape[0]}), got {len(generators)}")
    parts = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(parts).to(device=device, dtype=dtype)


def _steps(timesteps: Sequence[int], last_prev):
    """(i, t, prev) for each step: prev is the next timestep, `last_prev` after the last one."""
    for i, t in enumerate(timesteps):
        yield i, t, (timesteps[i + 1] if i + 1 < len(timesteps) else last_prev)


def _after_step(x, i: int, t: int, prev: int, post_step: PostStep, callback: Callback) -> torch.Tensor:
    """What every sampler does after a step: the caller's post_step (an edit's known pixels), then its callback."""
    if post_step is not None:
        x = post_step(x, prev)
    if callback is not None:
        callback(i, t, x)
    return x


def ddpm(
    denoise: Denoise,
    x: torch.Tensor,
    schedule: D.Schedule,
    timesteps: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    callback: Callback = None,
    post_step: PostStep = None,
    to: int | None = None,
) -> torch.Tensor:
    """Ancestral sampling (DDPM) over the respaced `timesteps` (descending, ending at 0).

    The noise scale is the posterior's ("fixed small") unless the denoiser returns learned-range
    variance channels. No noise is added on the step that reaches t = 0 data. `to`: the timestep
    the last step lands on, when sampling only part of the way (default: the data).
    """
    for i, t, prev in _steps(timesteps, to):
        prev = t - 1 if prev is None else prev
        pred = denoise(x, t)
        mean = D.posterior_mean(schedule, pred.x0, x, t, prev)
        if t > 0:
            noise = randn(x.shape, generators, x.device, x.dtype)
            log_var = D.posterior_log_variance(schedule, t, prev, pred.variance)
            x = mean + torch.exp(0.5 * log_var) * noise
        else:
            x = mean
        x = _after_step(x, i, t, prev, post_step, callback)
    return x


def ddim(
    denoise: Denoise,
    x: torch.Tensor,
    schedule: D.Schedule,
    timesteps: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    callback: Callback = None,
    post_step: PostStep = None,
    eta: float = 0.0,
    to: int = -1,
) -> torch.Tensor:
    """DDIM (Song et al. 2020); eta = 0 is deterministic, eta = 1 resembles DDPM. `to` as in ddpm."""
    for i, t, prev in _steps(timesteps, to):
        pred = denoise(x, t)
        eps = D.eps_from_x0(schedule, x, t, pred.x0)
        abar_t, abar_prev = schedule.alphas_cumprod[t], D.alpha_bar_at(schedule, prev)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) ** 0.5
        x = abar_prev**0.5 * pred.x0 + (1 - abar_prev - sigma**2).clamp(min=0) ** 0.5 * eps
        if eta > 0 and prev >= 0:
            x = x + sigma * randn(x.shape, generators, x.device, x.dtype)
        x = _after_step(x, i, t, prev, post_step, callback)
    return x


def dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    schedule: D.Schedule,
    timesteps: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    callback: Callback = None,
    post_step: PostStep = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the deterministic multistep solver of the probability-flow ODE
    in its data-prediction form, second order from the second step on. Uses only x0 (a learned variance
    is ignored); the step that reaches t = 0 data returns the last x0, as k-diffusion does."""
    return _multistep_2m(_ode_step, denoise, x, schedule, timesteps, generators, callback, post_step)


def dpmpp_2m_sde(
    denoise: Denoise,
    x: torch.Tensor,
    schedule: D.Schedule,
    timesteps: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    callback: Callback = None,
    post_step: PostStep = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022; the midpoint form of k-diffusion and diffusers'
    "sde-dpmsolver++"): the multistep data-prediction solver of the reverse SDE. Each step keeps
    exp(-h) of the ODE's x-coefficient and injects fresh noise sigma_prev * sqrt(1 - exp(-2h)), so like
    DDPM it can correct its own errors, at a second order's few steps. Uses only x0; the step that
    reaches t = 0 data returns the last x0."""
    return _multistep_2m(_sde_step, denoise, x, schedule, timesteps, generators, callback, post_step)


def _multistep_2m(step, denoise, x, schedule, timesteps, generators, callback, post_step) -> torch.Tensor:
    """The loop both DPM-Solver++(2M) forms share: `step(x, x0, old_x0, r, h, abar_t, abar_prev, generators)`
    takes one step of log-SNR/2 size h; r = old h / h (None on the first, first-order step)."""
    old_x0, old_h = None, None
    for i, t, prev in _steps(timesteps, -1):
        pred = denoise(x, t)
        if prev < 0:
            x = pred.x0
        else:
            abar_t, abar_prev = float(schedule.alphas_cumprod[t]), float(D.alpha_bar_at(schedule, prev))
            lam_t, lam_prev = (0.5 * math.log(a / (1 - a)) for a in (abar_t, abar_prev))  # log(alpha / sigma)
            h = lam_prev - lam_t
            r = None if old_x0 is None else old_h / h
            x = step(x, pred.x0, old_x0, r, h, abar_t, abar_prev, generators)
            old_h = h
        old_x0 = pred.x0
        x = _after_step(x, i, t, prev, post_step, callback)
    return x


def _ode_step(x, x0, old_x0, r, h, abar_t, abar_prev, generators):
    d = x0 if r is None else (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
    return ((1 - abar_prev) / (1 - abar_t)) ** 0.5 * x - abar_prev**0.5 * math.expm1(-h) * d


def _sde_step(x, x0, old_x0, r, h, abar_t, abar_prev, generators):
    sigma_t, sigma_prev = (1 - abar_t) ** 0.5, (1 - abar_prev) ** 0.5
    x = sigma_prev / sigma_t * math.exp(-h) * x - abar_prev**0.5 * math.expm1(-2 * h) * x0
    if r is not None:
        x = x - 0.5 * abar_prev**0.5 * math.expm1(-2 * h) * (x0 - old_x0) / r
    noise = randn(x.shape, generators, x.device, x.dtype)
    return x + sigma_prev * (-math.expm1(-2 * h)) ** 0.5 * noise


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "dpmpp_2m_sde": dpmpp_2m_sde}


# Adapters ------------------------------------------------------------------------------------


class Denoiser:
    """Adapts a network `net(x, t) -> output` to the `denoise(x, t) -> Prediction` contract.

    The stage's DiffusionSpec says what the output is: its prediction type (eps, v or x0), whether
    channels after the first C (C = the sample's) are a learned-range variance, and the x0 clamp.
    `dtype`: what the network computes in (its input is cast to it, its output back to float32).
    """

    def __init__(self, net, spec: DiffusionSpec, dtype: torch.dtype | None = None):
        self.net, self.spec, self.dtype = net, spec, dtype
        self.schedule = D.schedule_of(spec)

    def __call__(self, x: torch.Tensor, t: int) -> Prediction:
        # The network runs in its own dtype; the sampler's state, x0/eps conversions and clamps stay in
        # float32 (at t = T-1, 1/sqrt(abar) ~ 2e4 would amplify fp16/bf16 round-off into whole pixel levels).
        out = self.net(x.to(self.dtype) if self.dtype else x, t).float()
        variance = None
        if self.spec.learned_variance:
            out, variance = out.split(x.shape[1], dim=1)
        if self.spec.prediction == "epsilon":
            x0 = D.x0_from_eps(self.schedule, x, t, out)
        elif self.spec.prediction == "v":
            x0 = D.x0_from_v(self.schedule, x, t, out)
        else:
            x0 = out
        if self.spec.clamp is not None:
            x0 = x0.clamp(-self.spec.clamp, self.spec.clamp)
        return Prediction(x0=x0, variance=variance)


def guided(net_uncond_cond, scale: float, guided_channels: int | None = None, rescale: float = 0.0):
    """Classifier-free guidance over a network run on the doubled batch [uncond; cond].

    `net_uncond_cond(x2, t)` takes cat([x, x]) and returns [out_uncond; out_cond]. The first
    `guided_channels` channels (all if None) become g = u + scale (c - u); any others (learned variance)
    are taken from the conditional half, as Karlo does. `rescale` (0 to 1, "guidance rescale", Lin et al.
    2024, section 3.4, as diffusers' `guidance_rescale`): g is moved that fraction of the way to
    g * std(c) / std(g) (std per row over all its guided values), so that guidance away from an
    unconditional branch far from c (a negative prompt) cannot blow the prediction up.
    """

    def net(x: torch.Tensor, t: int) -> torch.Tensor:
        u, c = net_uncond_cond(torch.cat([x, x]), t).float().chunk(2)  # mixed in float32
        k = c.shape[1] if guided_channels is None else guided_channels
        g = u[:, :k] + scale * (c[:, :k] - u[:, :k])
        if rescale > 0:
            g = rescale * g * (_row_std(c[:, :k]) / _row_std(g).clamp(min=1e-12)) + (1 - rescale) * g
        return g if k == c.shape[1] else torch.cat([g, c[:, k:]], dim=1)

    return net


def _row_std(x: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each row over all its other dimensions, shaped to broadcast against x."""
    return x.std(dim=tuple(range(1, x.dim())), keepdim=True)
