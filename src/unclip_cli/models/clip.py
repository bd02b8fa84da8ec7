"""The CLIP stage, through open_clip: text -> (embedding, token states, mask); image -> embedding.

Any config of open_clip's own towers works (timm and Hugging Face towers are refused); the config travels with the weights. The only module that imports open_clip. Token states are computed
explicitly from open_clip's text tower (no hooks): token embedding + positions -> causal transformer
-> final LayerNorm, and the pooled embedding is the end-of-text state times the text projection.
Embeddings are projected but not L2-normalised, as unCLIP uses them.
"""

import sys
from dataclasses import dataclass

import torch
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TextEncoding:
    embed: torch.Tensor  # [B, D] projected pooled embedding
    tokens: torch.Tensor  # [B, L, W] final token states
    mask: torch.Tensor  # [B, L] bool, True from start- to end-of-text

    @staticmethod
    def cat(encodings: list["TextEncoding"]) -> "TextEncoding":
        return TextEncoding(*(torch.cat(ts) for ts in zip(*((e.embed, e.tokens, e.mask) for e in encodings))))

    def rows(self, index) -> "TextEncoding":
        """The encodings of these rows (a slice or an index tensor)."""
        return TextEncoding(self.embed[index], self.tokens[index], self.mask[index])

    def repeat_rows(self, n: int) -> "TextEncoding":
        """Each row n times in a row (rows a, b -> a, a, b, b for n = 2)."""
        return TextEncoding(*(t.repeat_interleave(n, 0) for t in (self.embed, self.tokens, self.mask)))


# open_clip imports these at start-up only for towers we never build (Hugging Face text towers, timm vision
# towers, CoCa generation). Import-time profile: transformers ~2.0 s when installed, timm ~0.8 s; held back, a cold
# `unclip generate` on shapes was 2.3-2.7 s faster on average (README "Start-up", benchmarks/cold_start.sh).
# In a process that imported open_clip through here, open_clip's HF/timm towers stay unavailable.
OPTIONAL_IMPORTS = ("transformers", "timm")


def import_open_clip():
    """Import open_clip with its optional libraries held back, unless this process already loaded them.

    A None in sys.modules makes `import transformers` raise ImportError, which open_clip catches and then
    leaves its HF/timm towers unavailable; the entries are removed again afterwards, so the libraries stay
    importable for everything else in the process. An open_clip that cannot import without them is
    dropped half-imported and imported again plainly."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    held = [name for name in OPTIONAL_IMPORTS if name not in sys.modules]
    for name in held:
        sys.modules[name] = None
    try:
        import open_clip

        return open_clip
    except ImportError:
        for name in [m for m in sys.modules if m.split(".")[0] == "open_clip"]:
            del sys.modules[name]
    finally:
        for name in held:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    import open_clip

    return open_clip


def build_model(config: dict):
    """An open_clip CLIP from a config dict {embed_dim, vision_cfg, text_cfg, quick_gelu}."""
    for tower in ("vision_cfg", "text_cfg"):
        cfg = config.get(tower)
        if isinstance(cfg, dict) and any(cfg.get(k) for k in ("timm_model_name", "hf_model_name")):
            raise ValueError(f"CLIP {tower} names a timm/Hugging Face tower; only open_clip's own towers are supported")
    return import_open_clip().model.CLIP(**config)


class AbsentTower(torch.nn.Module):
    """Stands in for a tower a checkpoint did not contain (Karlo's text-only CLIP); calling it raises."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"this CLIP was converted without a {self.name} tower")

    def set_grad_checkpointing(self, enable: bool = True):
        pass


class Tokenizer:
    """CLIP BPE with zero padding (Karlo's convention); reports what truncation drops."""

    def __init__(self, context_length: int):
        self.bpe = import_open_clip().tokenizer.SimpleTokenizer(context_length=context_length)
        self.context_length = context_length

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Returns ids [B, L], mask [B, L] bool, and for each prompt the words dropped by truncation."""
        L = self.context_length
        ids = torch.zeros(len(prompts), L, dtype=torch.long)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        dropped = []
        for i, text in enumerate(prompts):
            bpe = self.bpe.encode(text)
            kept = bpe[: L - 2]
            dropped.append(self.bpe.decode(bpe[L - 2 :]).strip() if len(bpe) > L - 2 else "")
            row = [self.bpe.sot_token_id, *kept, self.bpe.eot_token_id]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask, dropped


def encode_text(model, ids: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
    """ids, mask: [B, L] from `Tokenizer`. Returns the embedding, token states and mask."""
    device = model.token_embedding.weight.device
    dtype = model.token_embedding.weight.dtype
    ids = ids.to(device)
    x = model.token_embedding(ids).to(dtype) + model.positional_embedding.to(dtype)
    x = model.transformer(x, attn_mask=model.attn_mask.to(dtype))
    tokens = model.ln_final(x)  # [B, L, W]
    pooled = tokens[torch.arange(ids.shape[0], device=device), ids.argmax(dim=-1)]
    proj = model.text_projection
    embed = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
    return TextEncoding(embed=embed, tokens=tokens, mask=mask.to(device))


def image_size(model) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def preprocess(image: Image.Image, size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """CLIP preprocessing: shortest side to `size` (bicubic), centre crop, normalise. Returns [3, S, S]."""
    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
    x = x.permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def encode_image(model, pixels: torch.Tensor) -> torch.Tensor:
    """pixels: [B, 3, S, S] preprocessed. Returns the projected image embedding [B, D]."""
    weight = next(model.visual.parameters())
    return model.encode_image(pixels.to(device=weight.device, dtype=weight.dtype))


def image_size_from_config(config: dict) -> int:
    size = config["vision_cfg"].get("image_size", 224)
    return size[0] if isinstance(size, (tuple, list)) else int(size)
