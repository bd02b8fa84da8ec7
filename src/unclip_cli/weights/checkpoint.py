"""Stage checkpoints: safetensors files whose metadata carries the architecture config.

`save` writes {kind, config} as JSON metadata beside the tensors (as k-diffusion does), and for a
diffusion stage its `DiffusionSpec` ("diffusion"); `build` reads it, constructs the module on the meta device (no random init, no double memory), checks every
key and shape strictly, and assigns the tensors straight onto the chosen device and dtype.
Pickles are never read.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from unclip_cli.diffusion.spec import DiffusionSpec
from unclip_cli.errors import UnclipError

FORMAT = "unclip/1"
DIFFUSING = ("prior", "unet")  # kinds that are diffusion models and carry a DiffusionSpec


def _kinds():
    from unclip_cli.models import clip
    from unclip_cli.models.prior import Prior, PriorConfig
    from unclip_cli.models.text_proj import TextProj, TextProjConfig
    from unclip_cli.models.unet import UNet, UNetConfig

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


def save(path: str | Path, kind: str, config, state_dict: dict[str, torch.Tensor], *,
         diffusion: DiffusionSpec | None = None, extra: dict | None = None) -> None:
    """Write a stage checkpoint atomically (temporary file, then rename)."""
    path = Path(path)
    if (diffusion is None) != (kind not in DIFFUSING):
        raise ValueError(f"a '{kind}' checkpoint {'needs' if kind in DIFFUSING else 'takes no'} diffusion spec")
    meta = {"format": FORMAT, "kind": kind, "config": json.dumps(config_to_dict(config))}
    if diffusion is not None:
        meta["diffusion"] = json.dumps(diffusion.to_dict())
    if extra:
        meta["extra"] = json.dumps(extra)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def _legacy_spec(kind: str, config: dict) -> DiffusionSpec:
    """Checkpoints from before the spec was stored: what unclip 0.1 trained and sampled them with
    (the prior x0-predicting with clamp 5; a UNet's prediction in its config, and a learned-range
    variance exactly when it had twice the 3 image channels out)."""
    if kind == "prior":
        return DiffusionSpec(prediction="sample", clamp=5.0)
    learned = config.get("out_channels") == 6
    return DiffusionSpec(prediction=config.get("prediction", "epsilon"), variance="learned_range" if learned else "fixed_small",
                         guided_channels=3 if learned else None)


def _parse_meta(meta: dict, stage: str) -> tuple[dict, DiffusionSpec | None]:
    """(architecture config, diffusion spec) from a checkpoint's metadata."""
    kind = meta.get("kind")
    try:
        config = json.loads(meta["config"])
        if kind not in DIFFUSING:
            return config, None
        if "diffusion" not in meta:
            spec = _legacy_spec(kind, config)
            config.pop("prediction", None)  # was part of UNetConfig then
            return config, spec
        return config, DiffusionSpec.from_dict(json.loads(meta["diffusion"]))
    except (KeyError, ValueError, TypeError) as e:
        raise UnclipError(f"stage '{stage}': bad checkpoint metadata ({e})") from None


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
    try:
        return ctor(config_from_dict(cfg_cls, config))
    except ValueError as e:
        raise UnclipError(f"stage '{stage}': {e}") from None


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


READ_THREADS = 4  # tensors read at once: page faults and copies out of the page cache spread over the cores


def read_tensors(path: Path, stage: str, device="cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, each read into its own (aligned) CPU buffer; floating-point
    ones cast to `dtype` as they are read (so a bf16 load never holds the whole file in fp32).

    Plain reads instead of a memory map: a mapped file's pages count towards the process's memory
    while its tensors are copied out, which doubled the peak of a stage load. Up to READ_THREADS
    tensors are read at once (positional reads release the GIL), which took a 4 GB fp32 stage file
    from 2.4 to 1.3 s here.
    """
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            base, fd = 8 + n, f.fileno()

            def one(item):
                key, info = item
                start, end = info["data_offsets"]
                t = torch.empty(info["shape"], dtype=_DTYPES[info["dtype"]])
                buf = t.view(-1).view(torch.uint8) if t.numel() else t.view(torch.uint8)
                if buf.numel() != end - start:
                    raise ValueError(f"tensor '{key}' has {end - start} bytes for shape {info['shape']}")
                if buf.numel():
                    _read_at(f, fd, memoryview(buf.numpy()), base + start, key)
                return key, (t.to(dtype) if dtype is not None and t.is_floating_point() else t)

            if hasattr(os, "preadv") and len(header) > 1:
                with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
                    out = dict(pool.map(one, header.items()))
            else:
                out = dict(map(one, header.items()))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UnclipError(f"stage '{stage}': cannot read {path} ({e})") from None
    return {k: v.to(device) for k, v in out.items()} if str(device) != "cpu" else out


def _read_at(f, fd: int, into: memoryview, offset: int, key: str) -> None:
    """Fill `into` from byte `offset` of the file: positional reads where the OS has them (threads may share
    the file), else seek + readinto (one thread)."""
    done = 0
    while done < len(into):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [into[done:]], offset + done)
        else:
            f.seek(offset + done)
            got = f.readinto(into[done:])
        if not got:
            raise ValueError(f"file ends inside tensor '{key}'")
        done += got


def _checked_module(path: Path, stage: str, expect_kind: str | None):
    """(module on the meta device, config, spec) of a stage file, strictly checked from its header only."""
    meta, shapes = read_header(path, stage)
    config, spec = _checked_meta(path, meta, stage, expect_kind)
    with torch.device("meta"):
        module = instantiate(meta["kind"], config, stage)
    check_strict(stage, {k: tuple(v.shape) for k, v in module.state_dict().items()}, shapes)
    return module, config, spec


def check_file(path: Path, stage: str, expect_kind: str) -> DiffusionSpec | None:
    """Strict key/shape check of a stage file from its header only (no tensor is read); returns its spec."""
    return _checked_module(path, stage, expect_kind)[2]


def _checked_meta(path: Path, meta: dict, stage: str, expect_kind: str | None) -> tuple[dict, DiffusionSpec | None]:
    if meta.get("format") != FORMAT:
        raise UnclipError(f"stage '{stage}': {path} is not an unclip checkpoint (no '{FORMAT}' metadata)")
    if expect_kind and meta.get("kind") != expect_kind:
        raise UnclipError(f"stage '{stage}': {path} holds a '{meta.get('kind')}' model, expected '{expect_kind}'")
    return _parse_meta(meta, stage)


def build(path: str | Path, stage: str, device="cpu", dtype=torch.float32, expect_kind: str | None = None):
    """Build the module a checkpoint describes and load it strictly. Returns (module, config dict)."""
    path = Path(path)
    module, config, _ = _checked_module(path, stage, expect_kind)  # before reading any tensor data
    return load_into(module, read_tensors(path, stage, dtype=dtype), stage, device, dtype), config
