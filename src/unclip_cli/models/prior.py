"""The unCLIP prior: a causal transformer that maps a CLIP text embedding to a CLIP image embedding.

DALL-E 2 (arXiv 2204.06125, sec. 2.1): "a decoder-only Transformer with a causal attention mask on a
sequence consisting of, in order: the encoded text, the CLIP text embedding, an embedding for the
diffusion timestep, the noised CLIP image embedding, and a final embedding whose output from the
Transformer is used to predict the unnoised CLIP image embedding."

The model predicts x0 (the clean, *normalised* image embedding); `denormalize` maps a sample back
to CLIP space with the stored `clip_mean`/`clip_std`. Parameter names follow diffusers'
`PriorTransformer` so Karlo's prior loads unchanged.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unclip_cli.models.layers import TimestepMLP, timestep_features


@dataclass(frozen=True)
class PriorConfig:
    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 768  # CLIP embedding size (text and image)
    num_embeddings: int = 77  # text tokens
    additional_embeddings: int = 4  # text emb, time emb, noised image emb, prediction query
    text_width: int | None = None  # width of CLIP's token states; Karlo: = embedding_dim
    dropout: float = 0.0

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class Attention(nn.Module):
    """Multi-head self-attention with an additive bias mask (diffusers key layout)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = (p(x).view(B, L, self.heads, -1).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, h, L, d]
        out = out.transpose(1, 2).reshape(B, L, -1)
        return self.to_out[1](self.to_out[0](out))


class GELUProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)); x + ff(norm3(x)) (norm3 as diffusers names it)."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn1 = Attention(cfg.width, cfg.num_attention_heads, cfg.attention_head_dim, cfg.dropout)
        self.norm3 = nn.LayerNorm(cfg.width)
        self.ff = FeedForward(cfg.width, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), bias)
        return x + self.ff(self.norm3(x))


class Prior(nn.Module):
    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        W, D = cfg.width, cfg.embedding_dim
        L = cfg.num_embeddings + cfg.additional_embeddings
        self.time_embedding = TimestepMLP(W, W)
        self.proj_in = nn.Linear(D, W)  # noised image embedding
        self.embedding_proj = nn.Linear(D, W)  # CLIP text embedding
        self.encoder_hidden_states_proj = nn.Linear(cfg.text_width or D, W)  # CLIP token states
        self.positional_embedding = nn.Parameter(torch.zeros(1, L, W))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, W))
        self.transformer_blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = nn.LayerNorm(W)
        self.proj_to_clip_embeddings = nn.Linear(W, D)
        # Statistics of CLIP image embeddings; the prior diffuses (emb - mean) / std.
        self.clip_mean = nn.Parameter(torch.zeros(1, D))
        self.clip_std = nn.Parameter(torch.ones(1, D))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        text_embed: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the clean normalised image embedding.

        x: [B, D] noised image embedding; t: [B] or scalar integer timesteps;
        text_embed: [B, D]; text_tokens: [B, 77, text_width]; text_mask: [B, 77] bool (True = real token).
        Returns [B, D].
        """
        B = x.shape[0]
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t
        dtype = x.dtype
        temb = self.time_embedding(timestep_features(t, self.cfg.width).to(dtype))
        seq = torch.cat(
            [
                self.encoder_hidden_states_proj(text_tokens),
                self.embedding_proj(text_embed)[:, None],
                temb[:, None],
                self.proj_in(x)[:, None],
                self.prd_embedding.to(dtype).expand(B, -1, -1),
            ],
            dim=1,
        )
        seq = seq + self.positional_embedding.to(dtype)
        pad = (1 - text_mask.to(dtype)) * -10000.0
        pad = F.pad(pad, (0, self.cfg.additional_embeddings), value=0.0)
        L = seq.shape[1]
        causal = torch.full((L, L), -10000.0, device=x.device, dtype=dtype).triu_(1)
        bias = (pad[:, None, :] + causal)[:, None]  # [B, 1, L, L]
        for block in self.transformer_blocks:
            seq = block(seq, bias)
        return self.proj_to_clip_embeddings(self.norm_out(seq)[:, -1])

    def normalize(self, emb: torch.Tensor) -> torch.Tensor:
        return (emb - self.clip_mean) / self.clip_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.clip_std + self.clip_mean
