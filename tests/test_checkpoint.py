"""Strict stage checkpoints (unclip_cli.checkpoint), directly and through the command line."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import tiny
from unclip_cli.weights import checkpoint, hub, registry as weights
from unclip_cli.cli.app import app
from unclip_cli.errors import UnclipError


def prior_state() -> dict[str, torch.Tensor]:
    module = tiny.randomize(checkpoint.instantiate("prior", checkpoint.config_to_dict(tiny.PRIOR)), seed=1)
    return dict(module.state_dict())


def save_prior(path: Path, state: dict) -> Path:
    checkpoint.save(path, "prior", tiny.PRIOR, state, diffusion=tiny.PRIOR_SPEC)
    return path


def build_error(path: Path, stage: str = "prior") -> str:
    with pytest.raises(UnclipError) as e:
        checkpoint.build(path, stage)
    return str(e.value)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("stage, kind, config, spec", [("prior", "prior", tiny.PRIOR, tiny.PRIOR_SPEC),
                                                       ("sr256", "unet", tiny.SR, tiny.SR_SPEC),
                                                       ("text_proj", "text_proj", tiny.TEXT_PROJ, None)])
def test_round_trip(tmp_path, stage, kind, config, spec):
    module = tiny.randomize(checkpoint.instantiate(kind, checkpoint.config_to_dict(config)), seed=3)
    path = tmp_path / f"{stage}.safetensors"
    checkpoint.save(path, kind, config, module.state_dict(), diffusion=spec)
    assert checkpoint.check_file(path, stage, kind) == spec  # the spec travels in the metadata
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    built, cfg = checkpoint.build(path, stage, expect_kind=kind)
    assert cfg == json.loads(json.dumps(checkpoint.config_to_dict(config)))  # the config, as JSON gives it
    assert built.cfg == config
    assert not built.training
    saved, loaded = module.state_dict(), built.state_dict()
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert loaded[k].dtype == saved[k].dtype and torch.equal(loaded[k], saved[k]), k


def test_build_onto_bfloat16(tmp_path):
    path = save_prior(tmp_path / "prior.safetensors", prior_state())
    module, _ = checkpoint.build(path, "prior", dtype=torch.bfloat16)
    params = list(module.parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    assert all(not p.requires_grad for p in params)
    ref = prior_state()
    assert torch.equal(module.proj_in.weight, ref["proj_in.weight"].to(torch.bfloat16))


def test_wrong_kind_is_refused(tmp_path):
    path = save_prior(tmp_path / "prior.safetensors", prior_state())
    with pytest.raises(UnclipError, match=r"stage 'decoder'.*holds a 'prior' model, expected 'unet'"):
        checkpoint.build(path, "decoder", expect_kind="unet")


# --------------------------------------------------------------------------- strict keys and shapes


def test_wrong_shape(tmp_path):
    state = prior_state()
    good = tuple(state["proj_in.weight"].shape)
    bad = (good[0] + 1, good[1])
    state["proj_in.weight"] = torch.zeros(bad)
    msg = build_error(save_prior(tmp_path / "p.safetensors", state))
    assert "stage 'prior'" in msg and "'proj_in.weight'" in msg
    assert str(list(bad)) in msg and str(list(good)) in msg


def test_missing_key(tmp_path):
    state = prior_state()
    del state["norm_out.bias"]
    msg = build_error(save_prior(tmp_path / "p.safetensors", state))
    assert "stage 'prior'" in msg and "missing key 'norm_out.bias'" in msg


def test_unexpected_key(tmp_path):
    state = prior_state()
    state["extra.weight"] = torch.zeros(2, 2)
    msg = build_error(save_prior(tmp_path / "p.safetensors", state))
    assert "stage 'prior'" in msg and "unexpected key 'extra.weight'" in msg


def test_check_strict_names_stage_key_and_shapes():
    with pytest.raises(UnclipError, match=r"stage 'sr256': key 'w' has shape \[2, 3\] in the checkpoint but \[3, 2\]"):
        checkpoint.check_strict("sr256", {"w": (3, 2)}, {"w": (2, 3)})


def test_safetensors_without_unclip_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(prior_state(), str(path))
    assert "not an unclip checkpoint" in build_error(path)


def test_wrong_sha256(tmp_path):
    path = save_prior(tmp_path / "p.safetensors", prior_state())
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = "ab" * 32
    with pytest.raises(UnclipError) as e:
        hub.fetch(weights.Source(path=path, sha256=wrong), "stage 'prior' of model 'm'")
    msg = str(e.value)
    assert "stage 'prior'" in msg and actual in msg and wrong in msg
    # and the right hash passes
    assert hub.fetch(weights.Source(path=path, sha256=actual), "stage 'prior'") == path


class Boom:
    """Unpickling this creates a marker folder: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def pickle_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"proj_in.weight": torch.zeros(2, 2), "payload": Boom(marker)}, path)
    return path


def test_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = pickle_checkpoint(tmp_path / "prior.safetensors", marker)
    msg = build_error(path)
    assert "stage 'prior'" in msg and "not a valid safetensors file" in msg
    assert not marker.exists()
    # the fixture itself is a working exploit: unpickling it does run the payload
    exploit = tmp_path / "exploit.pt"
    exploit.write_bytes(path.read_bytes())
    torch.load(exploit, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- through the command line


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def install(home: Path, stage: str, write) -> Path:
    """Replace a stage file of the home's model and record its new sha256 in weights.toml."""
    path = home / f"{stage}.safetensors"
    write(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    toml = home / "weights.toml"
    text, n = re.subn(rf'^({stage} = .*sha256 = ")[0-9a-f]+(")', rf"\g<1>{digest}\g<2>", toml.read_text(), flags=re.M)
    assert n == 1
    toml.write_text(text)
    return path


def cli_error(home: Path, tmp_path: Path) -> str:
    out = tmp_path / "out"
    r = invoke("generate", "a cat", "--size", 64, "--prior-steps", 1, "--decoder-steps", 1, "-o", out)
    assert r.exit_code == 1
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def test_cli_wrong_shape(home, tmp_path):
    state = prior_state()
    good = list(state["proj_in.weight"].shape)
    state["proj_in.weight"] = torch.zeros(good[0], good[1] + 3)
    install(home, "prior", lambda p: save_prior(p, state))
    line = cli_error(home, tmp_path)
    assert "stage 'prior'" in line and "'proj_in.weight'" in line
    assert str([good[0], good[1] + 3]) in line and str(good) in line


def test_cli_missing_key(home, tmp_path):
    state = prior_state()
    del state["prd_embedding"]
    install(home, "prior", lambda p: save_prior(p, state))
    line = cli_error(home, tmp_path)
    assert "stage 'prior'" in line and "missing key 'prd_embedding'" in line


def test_cli_unexpected_key(home, tmp_path):
    state = prior_state()
    state["bonus"] = torch.ones(1)
    install(home, "prior", lambda p: save_prior(p, state))
    assert "unexpected key 'bonus'" in cli_error(home, tmp_path)


def test_cli_checkpoint_of_the_wrong_stage(home, tmp_path):
    """A valid checkpoint in the wrong slot (the prior's file where the decoder belongs) is refused."""
    install(home, "decoder", lambda p: p.write_bytes((home / "prior.safetensors").read_bytes()))
    line = cli_error(home, tmp_path)
    assert "stage 'decoder'" in line and "holds a 'prior' model, expected 'unet'" in line


def test_cli_checkpoint_of_the_wrong_stage_is_refused_before_sampling(home, tmp_path, monkeypatch):
    from unclip_cli.pipeline import cascade as pipeline

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started before the checkpoints were checked")

    monkeypatch.setattr(pipeline, "_sample", no_sampling)
    install(home, "decoder", lambda p: p.write_bytes((home / "prior.safetensors").read_bytes()))
    assert "expected 'unet'" in cli_error(home, tmp_path)


def test_cli_pickle_is_refused_and_never_unpickled(home, tmp_path):
    marker = tmp_path / "unpickled"
    install(home, "prior", lambda p: pickle_checkpoint(p, marker))
    line = cli_error(home, tmp_path)
    assert "stage 'prior'" in line and "not a valid safetensors file" in line
    assert not marker.exists()


def test_saved_metadata_is_json(tmp_path):
    path = tmp_path / "p.safetensors"
    checkpoint.save(path, "prior", tiny.PRIOR, prior_state(), diffusion=tiny.PRIOR_SPEC, extra={"step": 7})
    meta, shapes = checkpoint.read_header(path, "prior")
    assert meta["format"] == checkpoint.FORMAT and meta["kind"] == "prior"
    assert json.loads(meta["config"]) == checkpoint.config_to_dict(tiny.PRIOR)
    assert json.loads(meta["extra"]) == {"step": 7}
    assert shapes["proj_in.weight"] == tuple(prior_state()["proj_in.weight"].shape)


def test_a_diffusion_stage_needs_its_spec(tmp_path):
    with pytest.raises(ValueError, match="needs diffusion spec"):
        checkpoint.save(tmp_path / "p.safetensors", "prior", tiny.PRIOR, prior_state())
    with pytest.raises(ValueError, match="takes no diffusion spec"):
        checkpoint.save(tmp_path / "t.safetensors", "text_proj", tiny.TEXT_PROJ, {}, diffusion=tiny.PRIOR_SPEC)


def test_checkpoints_from_before_the_spec_still_load(tmp_path):
    """unclip 0.1 files carried no spec and a UNet's prediction in its config: they sample as they did then."""
    from safetensors.torch import save_file

    from unclip_cli.diffusion.spec import DiffusionSpec

    for kind, config, legacy, expected in [
        ("prior", tiny.PRIOR, {}, DiffusionSpec(prediction="sample", clamp=5.0)),
        ("unet", tiny.DECODER, {"prediction": "v"},
         DiffusionSpec(prediction="v", variance="learned_range", guided_channels=3)),
        ("unet", tiny.SR, {}, DiffusionSpec(prediction="epsilon")),
    ]:
        module = checkpoint.instantiate(kind, checkpoint.config_to_dict(config))
        path = tmp_path / f"{kind}-{len(legacy)}.safetensors"
        meta = {"format": checkpoint.FORMAT, "kind": kind, "config": json.dumps(checkpoint.config_to_dict(config) | legacy)}
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path), metadata=meta)
        assert checkpoint.check_file(path, kind, kind) == expected
        built, _ = checkpoint.build(path, kind, expect_kind=kind)
        assert built.cfg == config


def test_bad_diffusion_metadata_is_one_line(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "p.safetensors"
    meta = {"format": checkpoint.FORMAT, "kind": "prior", "config": json.dumps(checkpoint.config_to_dict(tiny.PRIOR)),
            "diffusion": json.dumps({"prediction": "x0"})}
    save_file(prior_state(), str(path), metadata=meta)
    with pytest.raises(UnclipError, match="stage 'prior': bad checkpoint metadata .*prediction"):
        checkpoint.check_file(path, "prior", "prior")


@pytest.mark.parametrize("how", ["threads", "one thread", "no positional reads", "short reads"])
def test_read_tensors_gives_every_tensor_exactly(tmp_path, monkeypatch, how):
    """Parallel positional reads (or the one-thread seek/readinto path, or reads the OS cuts short, as Linux does
    past 2 GB) give safetensors' own tensors, bit for bit, for every dtype and an empty tensor; casting happens as
    they are read."""
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {f"w{i}": torch.randn(37, i + 1, generator=g) for i in range(40)}
    tensors |= {"big": torch.randn(3, 1 << 20, generator=g), "half": torch.randn(5, 7, generator=g).half(),
                "bf": torch.randn(9, generator=g).bfloat16(), "ids": torch.arange(11), "flags": torch.tensor([True, False]),
                "empty": torch.zeros(0, 4)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    if how == "one thread":
        monkeypatch.setattr(checkpoint, "READ_THREADS", 1)
    if how == "no positional reads":
        monkeypatch.delattr(os, "preadv")
    if how == "short reads":
        real = os.preadv
        monkeypatch.setattr(os, "preadv", lambda fd, bufs, offset: real(fd, [bufs[0][:4096]], offset))
    ref = load_file(str(path))
    got = checkpoint.read_tensors(path, "prior")
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
    cast = checkpoint.read_tensors(path, "prior", dtype=torch.bfloat16)
    for k in ref:
        want = ref[k].to(torch.bfloat16) if ref[k].is_floating_point() else ref[k]
        assert cast[k].dtype == want.dtype and torch.equal(cast[k], want), k
