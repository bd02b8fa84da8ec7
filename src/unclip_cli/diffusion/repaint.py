"""RePaint resampling (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models") as a plain function over a denoiser and one of the samplers.

The respaced timesteps are walked in blocks of `jump` steps. Each block is sampled `resample` times:
after all but the last pass, the sample is noised back from where the block ended to where it began
with q(x_start | x_end) (the forward process over that jump), and the block is sampled again. With a
`post_step` that resets the known pixels (an edit), every pass lets the generated region adapt to the
known one it has just been made consistent with. Cost: `resample` times the network evaluations of
plain sampling. `resample = 1` is exactly the plain sampler (same calls, same noise draws).
"""

from collections.abc import Sequence

import torch

from unclip_cli.diffusion import gaussian as D
from unclip_cli.diffusion import samplers

SUPPORTED = ("ddpm", "ddim")  # samplers whose steps are single-step transitions (dpmpp_2m keeps a history)


def renoise(schedule: D.Schedule, x: torch.Tensor, frm: int, to: int, generators) -> torch.Tensor:
    """A draw of q(x_to | x_frm), to > frm (frm = -1: clean data): more noise over the jump frm -> to."""
    ratio = schedule.alphas_cumprod[to] / D.alpha_bar_at(schedule, frm)
    noise = samplers.randn(x.shape, generators, x.device, x.dtype)
    return ratio**0.5 * x + (1 - ratio) ** 0.5 * noise


def repaint(
    sampler,
    denoise: samplers.Denoise,
    x: torch.Tensor,
    schedule: D.Schedule,
    timesteps: Sequence[int],
    *,
    generators: Sequence[torch.Generator],
    resample: int = 1,
    jump: int = 1,
    callback: samplers.Callback = None,
    post_step: samplers.PostStep = None,
) -> torch.Tensor:
    """`sampler` (samplers.ddpm or samplers.ddim) with RePaint's resampling; callback(i, t, x) counts
    every step taken, len(timesteps) * resample in all."""
    if resample < 1 or jump < 1:
        raise ValueError(f"resample and jump must be at least 1, got {resample} and {jump}")
    if resample == 1:
        return sampler(denoise, x, schedule, timesteps, generators=generators, callback=callback, post_step=post_step)
    done = [0]

    def counted(i, t, x):
        done[0] += 1
        if callback is not None:
            callback(done[0] - 1, t, x)

    ts = list(timesteps)
    for start in range(0, len(ts), jump):
        block = ts[start:start + jump]
        end = ts[start + jump] if start + jump < len(ts) else -1
        for r in range(resample):
            if r > 0:
                x = renoise(schedule, x, end, block[0], generators)
            x = sampler(denoise, x, schedule, block, generators=generators, callback=counted, post_step=post_step,
                        to=end)
    return x
