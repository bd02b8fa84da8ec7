"""Karlo's diffusers layout for tests: the exact hub configs, and reduced random models saved like the hub.

`KARLO` holds Karlo v1 alpha's config.json contents (`unclip_cli.karlo.HUB_CONFIGS`) plus the
openai CLIP config of karlo-variations. `TINY` holds the same block types, narrower and shallower.
`write_folder` builds random diffusers / transformers models (seeded noise on every tensor), saves
them with save_pretrained in hub layout with a model_index.json, and returns the in-memory modules
so the reference diffusers pipelines can be built from the same components. No network access.
"""

import copy
import gzip
import inspect
import json
import os
from pathlib import Path

import torch

from unclip_cli.weights.karlo import HUB_CONFIGS, HUB_SCHEDULERS

KARLO = copy.deepcopy(HUB_CONFIGS)
# openai/clip-vit-large-patch14's CLIPModel config as re-saved by transformers 4.3x (defaults left out): the image
# tower of weights.toml's karlo-variations (Karlo's image_encoder holds the same weights).
KARLO["openai_clip"] = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
                        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "model_type": "clip_text_model",
                                        "num_attention_heads": 12, "projection_dim": 768},
                        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "model_type": "clip_vision_model",
                                          "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14,
                                          "projection_dim": 768}}

_SR_TINY = {**KARLO["super_res_first"], "block_out_channels": [4, 8, 8, 16], "layers_per_block": 1,
            "norm_num_groups": 4, "norm_eps": 1e-6}
TINY = {
    "prior": {**KARLO["prior"], "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "embedding_dim": 32},
    "decoder": {**KARLO["decoder"], "block_out_channels": [8, 16, 24, 32], "layers_per_block": 2,
                "norm_num_groups": 4, "cross_attention_dim": 48, "attention_head_dim": 8},
    "super_res_first": _SR_TINY,
    "super_res_last": {**_SR_TINY, "sample_size": None},
    "text_proj": {**KARLO["text_proj"], "clip_embeddings_dim": 32, "cross_attention_dim": 48, "time_embed_dim": 32},
    "text_encoder": {**KARLO["text_encoder"], "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "projection_dim": 32},
    "image_encoder": {"architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model",
                      "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 96,
                      "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "projection_dim": 32,
                      "layer_norm_eps": 1e-05},
}
DIFFUSERS_CLASS = {"prior": "PriorTransformer", "decoder": "UNet2DConditionModel", "super_res_first": "UNet2DModel",
                   "super_res_last": "UNet2DModel", "text_proj": "UnCLIPTextProjModel"}


def diffusers_class(name: str):
    import diffusers
    from diffusers.pipelines.deprecated.unclip import UnCLIPTextProjModel

    return UnCLIPTextProjModel if name == "UnCLIPTextProjModel" else getattr(diffusers, name)


def diffusers_model(folder: str, cfg: dict):
    """A diffusers module from a config.json dict (use under `torch.device('meta')` for shapes only)."""
    return diffusers_class(DIFFUSERS_CLASS[folder]).from_config(cfg)


def clip_model(folder: str, cfg: dict):
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    fields = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    if folder == "text_encoder":
        return CLIPTextModelWithProjection(CLIPTextConfig(**fields))
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**fields))


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded noise on every tensor (a constant init hides a missing bias, norm or embedding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name == "clip_mean":
                p.copy_(0.1 * noise)
            elif name == "clip_std":
                p.copy_(0.2 + 0.4 * torch.rand(p.shape, generator=g))
            elif p.dim() <= 1 or float(p.std()) == 0.0:  # norms, biases, embeddings, the CFG null embedding
                p.add_(0.1 * noise)
            else:
                p.add_(0.2 * float(p.std()) * noise)
    return module.eval()


def tokenizer():
    """Karlo's tokenizer (openai/clip-vit-large-patch14 BPE, pad token "!" = id 0), built offline from
    the BPE vocabulary bundled with open_clip (the hub's vocab.json/merges.txt hold the same tables)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(os.path.dirname(open_clip.__file__)) / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(m.split()) for m in gzip.open(bpe).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, pad_token="!", model_max_length=77)
    assert tok.pad_token_id == 0 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    return tok


def image_processor():
    """CLIPImageProcessor() with library defaults, as Karlo's feature_extractor. transformers 5 offers it with a
    PIL backend (CLIPImageProcessorPil: the algorithm of the 4.x class Karlo was published with) and a
    torchvision backend (the default class when torchvision is installed); see the test module docstring."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil()


def write_folder(root: Path, *, variations: bool = False, seed: int = 0) -> dict:
    """Random reduced Karlo (or Karlo image-variations) in hub layout under root. Returns the components."""
    from diffusers import UnCLIPScheduler

    root.mkdir(parents=True, exist_ok=True)
    folders = ["decoder", "super_res_first", "super_res_last", "text_proj"] + ([] if variations else ["prior"])
    with torch.random.fork_rng():  # the libraries' default init draws from the global generator
        torch.manual_seed(seed)
        parts = {f: randomize(diffusers_model(f, TINY[f]), seed + i) for i, f in enumerate(folders)}
        parts["text_encoder"] = randomize(clip_model("text_encoder", TINY["text_encoder"]), seed + 10)
        if variations:
            parts["image_encoder"] = randomize(clip_model("image_encoder", TINY["image_encoder"]), seed + 11)
    if variations:
        parts["feature_extractor"] = image_processor()
    parts["tokenizer"] = tokenizer()
    for name, cfg in HUB_SCHEDULERS.items():
        if name != "prior_scheduler" or not variations:
            parts[name] = UnCLIPScheduler(**cfg)
    index = {"_class_name": "UnCLIPImageVariationPipeline" if variations else "UnCLIPPipeline",
             "_diffusers_version": "0.11.0.dev0"}
    for name, part in parts.items():
        part.save_pretrained(root / name)
        library = "transformers" if name in ("text_encoder", "image_encoder", "tokenizer", "feature_extractor") else "diffusers"
        cls = type(part).__name__.removesuffix("Pil")
        index[name] = ["unclip" if name == "text_proj" else library, cls]
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return parts


def reference_pipeline(parts: dict):
    """diffusers' UnCLIPPipeline / UnCLIPImageVariationPipeline built from components (karlo.md sec. 8)."""
    from diffusers.pipelines.deprecated.unclip import UnCLIPImageVariationPipeline, UnCLIPPipeline

    cls = UnCLIPImageVariationPipeline if "image_encoder" in parts else UnCLIPPipeline
    names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    pipe = cls(**{n: parts[n] for n in names})
    pipe.set_progress_bar_config(disable=True)
    return pipe
