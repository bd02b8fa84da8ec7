"""Moving through CLIP's embedding space: spherical interpolation and the paper's text diffs.

Pure tensor math over rows of embeddings [B, D] (or [D]); no models here. CLIP embeddings carry
their meaning in their direction, and the decoder was trained on embeddings of a typical length,
so both functions move the direction along the great circle and keep the length on the straight
line between the ends (the length of the image embedding, for a text diff).
"""

import torch

from unclip_cli.errors import UnclipError


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from a (t = 0, returned exactly) to b (t = 1, returned exactly).

    The direction turns by t of the angle between a and b; the length goes linearly from |a| to |b|.
    Nearly parallel rows (angle < 1e-4 rad) fall back to a linear mix of the directions.
    """
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    a32, b32 = a.float(), b.float()
    ua, ub = _unit(a32), _unit(b32)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(cos)
    sin = torch.sin(omega)
    small = omega < 1e-4
    safe = torch.where(small, torch.ones_like(sin), sin)
    wa = torch.where(small, 1 - t * torch.ones_like(omega), torch.sin((1 - t) * omega) / safe)
    wb = torch.where(small, t * torch.ones_like(omega), torch.sin(t * omega) / safe)
    direction = _unit(wa * ua + wb * ub)
    length = (1 - t) * a32.norm(dim=-1, keepdim=True) + t * b32.norm(dim=-1, keepdim=True)
    return (direction * length).to(a.dtype)


def text_diff(image_embed: torch.Tensor, toward: torch.Tensor, source: torch.Tensor, amount: float) -> torch.Tensor:
    """DALL-E 2's text diff (Ramesh et al. 2022, section 3.3): z_d = normalize(z_t - z_t0), then
    slerp(z_i, z_d, amount), keeping the length of the image embedding z_i.

    toward, source: CLIP text embeddings of the target caption and of the caption describing the
    image now (both [D] or [B, D]).
    """
    d = (toward.float() - source.float()).expand_as(image_embed)
    if float(d.norm(dim=-1).min()) == 0:
        raise UnclipError("--toward and --from have the same CLIP text embedding: there is no direction to move in")
    z_d = _unit(d) * image_embed.float().norm(dim=-1, keepdim=True)  # same length: slerp only turns
    return slerp(image_embed, z_d.to(image_embed.dtype), amount)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows."""
    return (_unit(a.float()) * _unit(b.float())).sum(-1)
