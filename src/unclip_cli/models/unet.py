"""The GLIDE-style UNet used by the unCLIP decoder and upsamplers.

One configurable class covers both: the 64x64 decoder (scale-shift residual blocks, attention whose
keys/values also come from a context sequence, an external embedding added to the time embedding,
learned-variance output) and the super-resolution UNets (no attention, additive time embedding,
low-resolution image concatenated to the input). Parameter names follow diffusers'
`UNet2DConditionModel` / `UNet2DModel` so Karlo's checkpoints load unchanged.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unclip_cli.models.layers import TimestepMLP, timestep_features


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 3  # including the low-res channels for an upsampler
    out_channels: int = 6  # 3 eps (+ 3 variance channels when the variance is learned)
    block_out_channels: tuple[int, ...] = (320, 640, 960, 1280)
    layers_per_block: int = 3
    attention: tuple[bool, ...] = (False, True, True, True)  # per resolution level
    mid_attention: bool = True
    attention_head_dim: int = 64
    context_dim: int | None = 1536  # width of the context tokens (added keys/values); None = none
    scale_shift: bool = True  # time embedding as GroupNorm scale/shift (else added)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    dropout: float = 0.0
    sample_size: int = 64  # resolution the network generates at (decoder); upsamplers: the output size

    def __post_init__(self):
        # TOML/JSON give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        object.__setattr__(self, "attention", tuple(self.attention))
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError("UNetConfig: `attention` needs one entry per level of `block_out_channels`")

    @property
    def time_dim(self) -> int:
        return 4 * self.block_out_channels[0]


def inpaint_inputs(cfg: UNetConfig, image_channels: int = 3) -> bool:
    """Whether a decoder UNet was trained for inpainting, GLIDE-style: its input is
    cat[x_t, known image * keep, keep] (2 * image_channels + 1 channels; keep = 1 where the pixel is known)."""
    return cfg.in_channels == 2 * image_channels + 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block, optionally resampling (x2 nearest up / 2x2 avg-pool down)."""

    def __init__(self, cfg: UNetConfig, cin: int, cout: int, *, up: bool = False, down: bool = False):
        super().__init__()
        self.scale_shift = cfg.scale_shift
        self.up, self.down = up, down
        self.norm1 = nn.GroupNorm(cfg.norm_num_groups, cin, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(cfg.time_dim, cout * (2 if cfg.scale_shift else 1))
        self.norm2 = nn.GroupNorm(cfg.norm_num_groups, cout, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2, 2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # Without autograd the elementwise steps write into the tensors they were just given (same values,
        # bit for bit: the same operations in the same order), sparing a large allocation each.
        inplace = not torch.is_grad_enabled()
        h = self._resample(F.silu(self.norm1(x), inplace=inplace))
        x = self._resample(x)
        h = self.conv1(h)
        temb = self.time_emb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h)
            h = h.mul_(1 + scale).add_(shift) if inplace else h * (1 + scale) + shift
        else:
            h = self.norm2(h.add_(temb) if inplace else h + temb)
        h = self.conv2(self.dropout(F.silu(h, inplace=inplace)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        # in place only on equal layouts: after attention x is channels-last strided, and x + h then takes
        # that layout, which decides the next convolution's kernel (and its rounding)
        return h.add_(x) if inplace and h.stride() == x.stride() else x + h


class AttentionBlock(nn.Module):
    """Self-attention over pixels whose keys/values are prefixed by projected context tokens."""

    pixels_last = False  # set by UNet.to_channels_last: take [B, H, W, C] tensors as tokens without copies

    def __init__(self, cfg: UNetConfig, channels: int):
        super().__init__()
        self.heads = channels // cfg.attention_head_dim
        self.group_norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=cfg.norm_eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        if cfg.context_dim is not None:
            self.add_k_proj = nn.Linear(cfg.context_dim, channels)
            self.add_v_proj = nn.Linear(cfg.context_dim, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [B, C, H, W]; context: [B, N, context_dim]; bias: [B, N] additive (0 or -10000)."""
        B, C, H, W = x.shape
        pixels_last = self.pixels_last and _channels_last(x)
        if pixels_last:  # [B, H, W, C] in memory: the tokens are a view, no copy either way
            h = self.group_norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)
        else:
            # Norm the [B, C, HW] view and add the residual last, as diffusers does: the same memory layouts
            # pick the same CPU kernels (channels-last after the first attention), so Karlo's decoder
            # matches diffusers bit for bit; otherwise 1e-6 round-off, amplified ~2e4x at t=999, costs pixels.
            h = self.group_norm(x.reshape(B, C, H * W)).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        attn_bias = None
        if context is not None:
            ck, cv = self._context_kv(context)
            k, v = torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)
            if bias is not None:
                attn_bias = F.pad(bias, (0, H * W), value=0.0)[:, None, None, :]  # [B, 1, 1, N+HW]
        split = lambda t: t.reshape(B, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_bias)
        out = self.to_out[0](out.transpose(1, 2).reshape(B, H * W, C))
        if pixels_last:
            return out.reshape(B, H, W, C).permute(0, 3, 1, 2) + x
        return out.transpose(1, 2).reshape(B, C, H, W) + x

    def _context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context tokens' keys and values. While sampling (no autograd) they are kept for the next
        call with the same, unmodified context tensor and unmodified projection weights (version counters
        count in-place changes): a stage passes one context for all its steps, so they are computed once
        per image, not once per step. With autograd on, for inference-mode tensors, or inside torch.compile
        (the cache is Python state a traced graph cannot hold, and is_inference() would break the graph),
        never cached."""
        if torch.is_grad_enabled() or _is_compiling() or context.is_inference():
            self._kv_cache = None
            return self.add_k_proj(context), self.add_v_proj(context)
        key = (context._version, self.add_k_proj.weight._version, self.add_v_proj.weight._version,
               self.add_k_proj.bias._version, self.add_v_proj.bias._version)
        cached = getattr(self, "_kv_cache", None)
        if cached is not None and cached[0] is context and cached[1] == key:
            return cached[2], cached[3]
        kv = self.add_k_proj(context), self.add_v_proj(context)
        self._kv_cache = (context, key, *kv)
        return kv


# torch.compiler.is_compiling arrived in torch 2.3; before it nothing is traced by dynamo in this package's paths.
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _channels_last(x: torch.Tensor) -> bool:
    """Whether x is laid out [B, H, W, C] in memory (and not also plainly contiguous, as when C or HW is 1)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class DownBlock(nn.Module):
    def __init__(self, cfg: UNetConfig, cin: int, cout: int, attention: bool, downsample: bool):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList([ResBlock(cfg, cin if i == 0 else cout, cout) for i in range(n)])
        self.attentions = nn.ModuleList([AttentionBlock(cfg, cout) for _ in range(n)]) if attention else None
        self.downsamplers = nn.ModuleList([ResBlock(cfg, cout, cout, down=True)]) if downsample else None


class UpBlock(nn.Module):
    def __init__(self, cfg: UNetConfig, skips: list[int], cprev: int, cout: int, attention: bool, upsample: bool):
        super().__init__()
        cins = [(cprev if i == 0 else cout) + s for i, s in enumerate(skips)]
        self.resnets = nn.ModuleList([ResBlock(cfg, c, cout) for c in cins])
        self.attentions = nn.ModuleList([AttentionBlock(cfg, cout) for _ in cins]) if attention else None
        self.upsamplers = nn.ModuleList([ResBlock(cfg, cout, cout, up=True)]) if upsample else None


class MidBlock(nn.Module):
    def __init__(self, cfg: UNetConfig, ch: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cfg, ch, ch), ResBlock(cfg, ch, ch)])
        self.attentions = nn.ModuleList([AttentionBlock(cfg, ch)]) if cfg.mid_attention else None


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        chs = cfg.block_out_channels
        n_levels = len(chs)
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepMLP(chs[0], cfg.time_dim)

        skips = [chs[0]]  # channels of every tensor the down path hands to the up path
        self.down_blocks = nn.ModuleList()
        cin = chs[0]
        for level, cout in enumerate(chs):
            last = level == n_levels - 1
            self.down_blocks.append(DownBlock(cfg, cin, cout, cfg.attention[level], downsample=not last))
            skips += [cout] * cfg.layers_per_block + ([] if last else [cout])
            cin = cout

        self.mid_block = MidBlock(cfg, chs[-1])

        self.up_blocks = nn.ModuleList()
        cprev = chs[-1]
        for i, level in enumerate(reversed(range(n_levels))):
            block_skips = [skips.pop() for _ in range(cfg.layers_per_block + 1)]
            up = UpBlock(cfg, block_skips, cprev, chs[level], cfg.attention[level], upsample=level > 0)
            self.up_blocks.append(up)
            cprev = chs[level]

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chs[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

    def to_channels_last(self) -> "UNet":
        """Lay the 4-D weights out channels_last (in place) and let attention read that layout as tokens.

        Faster for oneDNN's bf16/fp16 convolutions on the CPU; not used in fp32, where the plain layout
        keeps Karlo's decoder bit for bit equal to diffusers' (whose attention output is channels-last
        strided, so the attention blocks must not switch kernels on the input's layout alone)."""
        self.to(memory_format=torch.channels_last)
        for m in self.modules():
            if isinstance(m, AttentionBlock):
                m.pixels_last = True
        return self

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        low_res: torch.Tensor | None = None,
        emb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, C, H, W] noisy image; t: [B] or scalar timesteps on the training scale.

        low_res: [B, C', H, W] upsampled low-resolution image, concatenated after x (upsamplers).
        emb: [B, time_dim] added to the time embedding (the decoder's CLIP conditioning).
        context: [B, N, context_dim] tokens for the attention keys/values; context_mask: [B, N] bool.
        Returns [B, out_channels, H, W].
        """
        B = x.shape[0]
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t
        temb = self.time_embedding(timestep_features(t, self.cfg.block_out_channels[0]).to(x.dtype))
        if emb is not None:
            temb = temb + emb
        bias = None
        if context is not None and context_mask is not None:
            bias = (1 - context_mask.to(x.dtype)) * -10000.0
        if low_res is not None:
            x = torch.cat([x, low_res], dim=1)

        h = self.conv_in(x)
        hs = [h]
        for block in self.down_blocks:
            for i, res in enumerate(block.resnets):
                h = res(h, temb)
                if block.attentions is not None:
                    h = block.attentions[i](h, context, bias)
                hs.append(h)
            if block.downsamplers is not None:
                h = block.downsamplers[0](h, temb)
                hs.append(h)

        mid = self.mid_block
        h = mid.resnets[0](h, temb)
        if mid.attentions is not None:
            h = mid.attentions[0](h, context, bias)
        h = mid.resnets[1](h, temb)

        for block in self.up_blocks:
            for i, res in enumerate(block.resnets):
                h = res(torch.cat([h, hs.pop()], dim=1), temb)
                if block.attentions is not None:
                    h = block.attentions[i](h, context, bias)
            if block.upsamplers is not None:
                h = block.upsamplers[0](h, temb)

        return self.conv_out(F.silu(self.conv_norm_out(h), inplace=not torch.is_grad_enabled()))
