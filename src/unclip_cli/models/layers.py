"""Small layers shared by the prior and the UNets: sinusoidal timestep features and their MLP.

Parameter names follow diffusers (`linear_1`, `linear_2`) so Karlo's checkpoints load as they are.
"""

import math

import torch
from torch import nn


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer timesteps t [B] -> [B, dim], laid out [cos, sin].

    Frequencies exp(-ln(10000) * i / half) for i < half (no frequency shift), as in
    diffusers' `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)` and Karlo.
    """
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """Linear -> SiLU -> Linear over the timestep features."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
