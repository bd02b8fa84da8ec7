"""The unCLIP decoder conditioning (DALL-E 2, sec. 2.2; GLIDE-based decoder).

"We enable classifier-free guidance by randomly setting the CLIP embeddings to zero (or a learned
embedding) 10% of the time ... we project and add CLIP embeddings to the existing timestep
embedding, and by projecting CLIP embeddings into four extra tokens of context that are
concatenated to the sequence of outputs from the GLIDE text encoder."

`TextProj` turns (image embedding, text embedding, text token states, text mask) into the UNet's
additive embedding and context sequence. Parameter names follow diffusers' `UnCLIPTextProjModel`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TextProjConfig:
    clip_embeddings_dim: int = 768
    clip_extra_context_tokens: int = 4
    cross_attention_dim: int = 1536  # = UNetConfig.context_dim
    time_embed_dim: int = 1280  # = UNetConfig.time_dim
    text_width: int | None = None  # width of CLIP's token states; Karlo: = clip_embeddings_dim


class TextProj(nn.Module):
    def __init__(self, cfg: TextProjConfig):
        super().__init__()
        self.cfg = cfg
        D, X = cfg.clip_embeddings_dim, cfg.cross_attention_dim
        # The null image embedding used for the unconditional branch of classifier-free guidance.
        self.learned_classifier_free_guidance_embeddings = nn.Parameter(torch.zeros(D))
        self.embedding_proj = nn.Linear(D, cfg.time_embed_dim)  # text embedding -> time embedding
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(D, cfg.time_embed_dim)
        self.clip_extra_context_tokens_proj = nn.Linear(D, X * cfg.clip_extra_context_tokens)
        self.encoder_hidden_states_proj = nn.Linear(cfg.text_width or D, X)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(X)

    def null_image_embed(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.learned_classifier_free_guidance_embeddings.to(dtype)[None].expand(batch, -1)

    def forward(
        self,
        image_embed: torch.Tensor,
        text_embed: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_embed, text_embed: [B, D]; text_tokens: [B, 77, W]; text_mask: [B, 77] bool.

        Returns (emb [B, time_dim], context [B, 4 + 77, X], context_mask [B, 4 + 77]).
        """
        B = image_embed.shape[0]
        n = self.cfg.clip_extra_context_tokens
        emb = self.embedding_proj(text_embed) + self.clip_image_embeddings_project_to_time_embeddings(image_embed)
        # Channel-major layout, as the original reshape(B, -1, 4) on channels-first context.
        extra = self.clip_extra_context_tokens_proj(image_embed).reshape(B, -1, n).permute(0, 2, 1)
        tokens = self.text_encoder_hidden_states_norm(self.encoder_hidden_states_proj(text_tokens))
        context = torch.cat([extra, tokens], dim=1)
        context_mask = F.pad(text_mask.bool(), (n, 0), value=True)
        return emb, context, context_mask
