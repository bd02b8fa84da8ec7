"""Stage checkpoints: safetensors files whose metadata carries the architecture config.

`save` writes {kind, config} as JSON metadata beside the tensors (as k-diffusion does); `build`
reads it, constructs the module on the meta device (no random init, no double memory), checks every
key and shape strictly, and assigns the tensors straight onto the chosen device and dtype.
Pickles are never read.
"""

import json
import os
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from unclip_cli.errors import UnclipError

FORMAT = "unclip/1"


def _kinds():
    from unclip_cli import clip
    from unclip_cli.prior import Prior, PriorConfig
    from unclip_cli.text_proj import TextProj, TextProjConfig
    from unclip_cli.unet import UNet, UNetConfig

    return {
        "prior": (Prior, PriorConfig),
        "unet": (UNet, UNetConfig),
        "text_proj": (TextProj, TextProjConfig),
        "clip": (clip.build_model, dict),
    }


def config_to_dict(config) -> dict:
    return asdict(config) if is_dataclass(config) else dict(config)


def config_from_dict(cls, data: dict):
    if cls is dict:
        return dict(data)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise UnclipError(f"{cls.__name__}: unknown config fields {sorted(unknown)}")
    return cls(**data)


def save(path: str | Path, kind: str, config, state_dict: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    """Write a stage checkpoint atomically (temporary file, then rename)."""
    path = Path(path)
    meta = {"format": FORMAT, "kind": kind, "config": json.dumps(config_to_dict(config))}
    if extra:
        meta["extra"] = json.dumps(extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def read_header(path: Path, stage: str) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(metadata, {key: shape}) of a safetensors file, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise UnclipError(f"stage '{stage}': checkpoint {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UnclipError(f"stage '{stage}': {path} is not a valid safetensors file ({e})") from None
    return meta, shapes


def check_strict(stage: str, expected: dict[str, tuple], found: dict[str, tuple]) -> None:
    """Raise naming the first missing key, unexpected key or shape mismatch."""
    for key, shape in expected.items():
        if key not in found:
            raise UnclipError(f"stage '{stage}': checkpoint is missing key '{key}' (model expects shape {list(shape)})")
        if tuple(found[key]) != tuple(shape):
            raise UnclipError(
                f"stage '{stage}': key '{key}' has shape {list(found[key])} in the checkpoint "
                f"but {list(shape)} in the model"
            )
    for key in found:
        if key not in expected:
            raise UnclipError(f"stage '{stage}': checkpoint has unexpected key '{key}' (shape {list(found[key])})")


def instantiate(kind: str, config: dict, stage: str = "?"):
    kinds = _kinds()
    if kind not in kinds:
        raise UnclipError(f"stage '{stage}': unknown checkpoint kind '{kind}'")
    ctor, cfg_cls = kinds[kind]
    return ctor(config_from_dict(cfg_cls, config))


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], stage: str, device, dtype):
    """Strictly assign `tensors` (already renamed to the module's keys) to a meta-device module."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_strict(stage, expected, {k: tuple(v.shape) for k, v in tensors.items()})
    tensors = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in tensors.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    _materialize_buffers(module, device, dtype)
    return module.eval().requires_grad_(False)


def _materialize_buffers(module: torch.nn.Module, device, dtype) -> None:
    # Non-persistent buffers are not in checkpoints; rebuild the ones a meta-device module lacks.
    if getattr(module, "attn_mask", None) is not None and module.attn_mask.is_meta:  # open_clip's causal mask
        L = module.positional_embedding.shape[0]
        module.attn_mask = torch.full((L, L), float("-inf"), device=device).triu_(1)
    for name, buf in module.named_buffers():
        if buf.is_meta:
            raise UnclipError(f"internal: buffer '{name}' was not materialised")


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_tensors(path: Path, stage: str, device="cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, each read into its own (aligned) CPU buffer.

    Plain reads instead of a memory map: a mapped file's pages count towards the process's memory
    while its tensors are copied out, which doubled the peak of a stage load.
    """
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            base = 8 + n
            out = {}
            header.pop("__metadata__", None)
            for key, info in header.items():
                start, end = info["data_offsets"]
                t = torch.empty(info["shape"], dtype=_DTYPES[info["dtype"]])
                buf = t.view(-1).view(torch.uint8) if t.numel() else t.view(torch.uint8)
                if buf.numel() != end - start:
                    raise ValueError(f"tensor '{key}' has {end - start} bytes for shape {info['shape']}")
                f.seek(base + start)
                if buf.numel() and f.readinto(memoryview(buf.numpy())) != buf.numel():
                    raise ValueError(f"file ends inside tensor '{key}'")
                out[key] = t
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UnclipError(f"stage '{stage}': cannot read {path} ({e})") from None
    return {k: v.to(device) for k, v in out.items()} if str(device) != "cpu" else out


def build(path: str | Path, stage: str, device="cpu", dtype=torch.float32, expect_kind: str | None = None):
    """Build the module a checkpoint describes and load it strictly. Returns (module, config dict)."""
    path = Path(path)
    meta, shapes = read_header(path, stage)
    if meta.get("format") != FORMAT:
        raise UnclipError(f"stage '{stage}': {path} is not an unclip checkpoint (no '{FORMAT}' metadata)")
    kind, config = meta["kind"], json.loads(meta["config"])
    if expect_kind and kind != expect_kind:
        raise UnclipError(f"stage '{stage}': {path} holds a '{kind}' model, expected '{expect_kind}'")
    with torch.device("meta"):
        module = instantiate(kind, config, stage)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_strict(stage, expected, shapes)  # before reading any tensor data
    return load_into(module, read_tensors(path, stage), stage, device, dtype), config
