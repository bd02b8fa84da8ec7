"""`unclip train`: every stage trains, exports loadable stage files, resumes; DDP keeps replicas identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tiny
from unclip_cli.errors import UnclipError
from unclip_cli.models import clip
from unclip_cli.weights import checkpoint
from unclip_cli.shapes import world as shapes
from unclip_cli.train import loop as train


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def write_toml(path: Path, sections: dict) -> Path:
    lines = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items() if not isinstance(v, dict) and v is not None]
        for sub, vals in nested.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in vals.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


TRAIN = {"steps": 3, "batch_size": 4, "lr": 1e-3, "warmup": 1, "log_every": 1, "save_every": 2, "ema_decay": 0.9}


def unet_fields(cfg) -> dict:
    d = checkpoint.config_to_dict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if v is not None}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    shapes.write_dataset(root / "data", 24, seed=3, size=64)
    return root


@pytest.fixture(scope="module")
def clip_ckpt(workdir) -> Path:
    cfg = write_toml(workdir / "clip.toml", {"model": tiny.CLIP, "data": {"folder": str(workdir / "data")}, "train": TRAIN})
    out = train.run("clip", cfg, workdir / "clip")
    return out / "clip.safetensors"


def test_clip_trains_and_exports(clip_ckpt):
    model, config = checkpoint.build(clip_ckpt, "clip", expect_kind="clip")
    assert config["embed_dim"] == tiny.CLIP["embed_dim"]
    log = [json.loads(line) for line in (clip_ckpt.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_prior_trains_with_clip_statistics(workdir, clip_ckpt):
    model = {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 1}
    cfg = write_toml(workdir / "prior.toml", {"model": model, "data": {"folder": str(workdir / "data"), "clip": str(clip_ckpt)},
                                              "train": TRAIN})
    out = train.run("prior", cfg, workdir / "prior")
    prior, config = checkpoint.build(out / "prior.safetensors", "prior", expect_kind="prior")
    assert config["embedding_dim"] == tiny.CLIP["embed_dim"]
    assert prior.clip_std.abs().sum() > 0 and not torch.allclose(prior.clip_std, torch.ones_like(prior.clip_std))


def decoder_config(workdir, clip_ckpt, steps=3) -> Path:
    model = unet_fields(tiny.DECODER) | {"sample_size": 32}
    return write_toml(workdir / f"decoder{steps}.toml", {
        "model": model, "data": {"folder": str(workdir / "data"), "clip": str(clip_ckpt), "image_size": 32},
        "dropout": {"image": 0.5, "text": 0.5}, "train": TRAIN | {"steps": steps}})


def test_decoder_trains_exports_and_resumes(workdir, clip_ckpt):
    out = workdir / "decoder"
    train.run("decoder", decoder_config(workdir, clip_ckpt, steps=2), out)
    first = load_file(str(out / "state.safetensors"))
    train.run("decoder", decoder_config(workdir, clip_ckpt, steps=4), out)  # resumes at step 2
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    unet, cfg = checkpoint.build(out / "decoder.safetensors", "decoder", expect_kind="unet")
    proj, _ = checkpoint.build(out / "text_proj.safetensors", "text_proj", expect_kind="text_proj")
    assert cfg["sample_size"] == 32 and proj.cfg.cross_attention_dim == unet.cfg.context_dim
    later = load_file(str(out / "state.safetensors"))
    assert not torch.equal(first["model.unet.conv_in.weight"], later["model.unet.conv_in.weight"])


def test_upsampler_trains_on_degraded_crops(workdir):
    for kind in ("blur", "bsr"):
        cfg = write_toml(workdir / f"sr-{kind}.toml", {
            "model": unet_fields(tiny.SR), "data": {"folder": str(workdir / "data")},
            "upsampler": {"name": "sr256", "low_size": 16, "high_size": 64, "crop": 32, "degradation": kind},
            "train": TRAIN})
        out = train.run("upsampler", cfg, workdir / f"sr-{kind}")
        unet, _ = checkpoint.build(out / "sr256.safetensors", "sr256", expect_kind="unet")
        assert unet.cfg.in_channels == 6


def test_exported_weights_are_the_ema(workdir, clip_ckpt):
    out = workdir / "decoder"
    state = load_file(str(out / "state.safetensors"))
    exported = load_file(str(out / "decoder.safetensors"))
    key = "conv_in.weight"
    assert torch.allclose(exported[key].float(), state[f"ema.unet.{key}"].half().float())
    assert not torch.equal(state[f"ema.unet.{key}"], state[f"model.unet.{key}"])


def test_unknown_stage_and_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = 'x\n")
    with pytest.raises(UnclipError, match="not valid TOML"):
        train.run("clip", bad, tmp_path / "o")
    good = write_toml(tmp_path / "c.toml", {"model": tiny.CLIP, "data": {"folder": str(tmp_path)}, "train": TRAIN})
    with pytest.raises(UnclipError, match="unknown stage"):
        train.run("vae", good, tmp_path / "o")


def test_ddp_two_cpu_processes_keep_replicas_identical(workdir, clip_ckpt, tmp_path):
    cfg = decoder_config(workdir, clip_ckpt, steps=3)
    out = tmp_path / "ddp"
    env = {**os.environ, "UNCLIP_SAVE_REPLICAS": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "unclip_cli", "train", "decoder", "--config", str(cfg), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = load_file(str(out / "replica-0.safetensors")), load_file(str(out / "replica-1.safetensors"))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # The ranks saw different data, so identical weights show that gradients were averaged.
    single = load_file(str(workdir / "decoder" / "state.safetensors"))
    assert not torch.equal(r0["unet.conv_in.weight"], single["model.unet.conv_in.weight"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3


def test_clip_hard_negatives_add_texts_and_train(workdir):
    from unclip_cli.train import tasks

    raw = {"model": tiny.CLIP, "data": {"folder": str(workdir / "data")}, "contrastive": {"hard_negatives": True}}
    task = tasks.make("clip", raw, workdir, train.Dist())
    b = task.batch(6, torch.Generator().manual_seed(0))
    assert b["pixels"].shape[0] == 6 and b["ids"].shape[0] == 12  # every shapes caption brings one negative
    out = task.loss(task.module, b, None)
    assert torch.isfinite(out["loss"])
    cfg = write_toml(workdir / "clip_neg.toml", {"model": tiny.CLIP, "data": {"folder": str(workdir / "data")},
                                                 "train": TRAIN, "contrastive": {"hard_negatives": True}})
    out_dir = train.run("clip", cfg, workdir / "clip_neg")
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_clip_hard_negatives_all_brings_every_kind_and_bad_values_are_refused(workdir):
    from unclip_cli.train import tasks

    raw = {"model": tiny.CLIP, "data": {"folder": str(workdir / "data")}, "contrastive": {"hard_negatives": "all"}}
    task = tasks.make("clip", raw, workdir, train.Dist())
    gen = torch.Generator().manual_seed(0)
    b = task.batch(8, gen)
    idx = torch.randint(0, len(task.images), (8,), generator=torch.Generator().manual_seed(0))
    expected = sum(len(shapes.hard_negatives(task.captions[i], 0)) for i in idx.tolist())
    assert b["pixels"].shape[0] == 8 and b["ids"].shape[0] == 8 + expected > 8
    assert torch.isfinite(task.loss(task.module, b, None)["loss"])
    with pytest.raises(UnclipError, match="hard_negatives.*'some'"):
        tasks.make("clip", {**raw, "contrastive": {"hard_negatives": "some"}}, workdir, train.Dist())


def test_clip_layout_head_trains_and_is_not_exported(workdir):
    from safetensors import safe_open
    from unclip_cli.train import tasks

    raw = {"model": tiny.CLIP, "data": {"folder": str(workdir / "data")},
           "contrastive": {"hard_negatives": "all", "layout_weight": 1.0}}
    task = tasks.make("clip", raw, workdir, train.Dist())
    b = task.batch(8, torch.Generator().manual_seed(0))
    assert b["layout"].shape == (8, 5)
    terms = task.loss(task.module, b, None)
    assert torch.isfinite(terms["loss"]) and terms["layout_loss"] > 0
    terms["loss"].backward()
    assert task.module.layout_head.weight.grad.abs().sum() > 0
    cfg = write_toml(workdir / "clip_layout.toml", {**raw, "train": TRAIN})
    out = train.run("clip", cfg, workdir / "clip_layout")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("layout_loss" in r and "axis_acc" in r for r in log)
    with safe_open(str(out / "clip.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith(("clip.", "layout_head")) for k in keys)
    model, _ = checkpoint.build(out / "clip.safetensors", "clip", expect_kind="clip")  # strict load as a plain CLIP
    assert model.logit_scale.shape == ()
    for bad in ("1", -1.0, True):
        with pytest.raises(UnclipError, match="layout_weight"):
            tasks.make("clip", {**raw, "contrastive": {"layout_weight": bad}}, workdir, train.Dist())


def test_clip_with_fixed_sin_cos_positions_trains_exports_and_loads(workdir):
    """open_clip's pos_embed_type = "sin_cos_2d" (fixed, not trained) travels in the config and the file."""
    vision = {**tiny.CLIP["vision_cfg"], "pos_embed_type": "sin_cos_2d"}
    cfg = write_toml(workdir / "clip_sincos.toml", {"model": {**tiny.CLIP, "vision_cfg": vision},
                                                    "data": {"folder": str(workdir / "data")}, "train": TRAIN})
    out = train.run("clip", cfg, workdir / "clip_sincos")
    model, config = checkpoint.build(out / "clip.safetensors", "clip", expect_kind="clip")
    assert config["vision_cfg"]["pos_embed_type"] == "sin_cos_2d"
    fresh = clip.build_model({**tiny.CLIP, "vision_cfg": vision})
    # not trained: the fixed table, as exported (fp16 unless the config says otherwise)
    assert torch.equal(model.visual.positional_embedding, fresh.visual.positional_embedding.half().float())
    assert model.visual.positional_embedding.abs().sum() > 0


def test_exports_carry_their_diffusion_spec(workdir, clip_ckpt):
    """What a stage samples with travels in its file: the decoder's learned variance, an upsampler's v-prediction."""
    from unclip_cli.diffusion.spec import DiffusionSpec

    spec = checkpoint.check_file(workdir / "decoder" / "decoder.safetensors", "decoder", "unet")
    assert spec == DiffusionSpec(prediction="epsilon", variance="learned_range", guided_channels=3, clamp=1.0)
    assert checkpoint.check_file(workdir / "prior" / "prior.safetensors", "prior", "prior") == \
        DiffusionSpec(prediction="sample", clamp=5.0)
    cfg = write_toml(workdir / "sr-v.toml", {
        "model": unet_fields(tiny.SR), "data": {"folder": str(workdir / "data")},
        "upsampler": {"name": "sr256", "low_size": 16, "high_size": 64, "crop": 32}, "train": TRAIN | {"steps": 1},
        "diffusion": {"prediction": "v"}})
    out = train.run("upsampler", cfg, workdir / "sr-v")
    assert checkpoint.check_file(out / "sr256.safetensors", "sr256", "unet") == DiffusionSpec(prediction="v")


def test_diffusion_table_must_fit_the_network(workdir, clip_ckpt, tmp_path):
    raw = {"model": unet_fields(tiny.DECODER) | {"sample_size": 32}, "train": TRAIN,
           "data": {"folder": str(workdir / "data"), "clip": str(clip_ckpt), "image_size": 32}}
    for table, match in (({"variance": "fixed_small"}, "out_channels = 6"), ({"prediction": "x0"}, "prediction"),
                         ({"clamp": -1.0}, "clamp")):
        cfg = write_toml(tmp_path / "d.toml", raw | {"diffusion": table})
        with pytest.raises(UnclipError, match=match):
            train.run("decoder", cfg, tmp_path / "o")


def test_data_paths_are_relative_to_the_config_file(workdir, tmp_path):
    """A config's [data] paths are read from its own folder, wherever the command runs."""
    configs = tmp_path / "configs" / "nested"
    configs.mkdir(parents=True)
    rel = os.path.relpath(workdir / "data", configs)
    cfg = write_toml(configs / "clip.toml", {"model": tiny.CLIP, "data": {"folder": rel}, "train": TRAIN | {"steps": 1}})
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the folder is not relative to here
    try:
        out = train.run("clip", cfg, tmp_path / "out")
    finally:
        os.chdir(cwd)
    assert (out / "clip.safetensors").is_file()
