"""scripts/average_stages.py: the tensor-wise mean of stage files of one architecture, loadable as a stage."""

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file

import tiny
from unclip_cli.weights import checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "average_stages.py"
spec = importlib.util.spec_from_file_location("average_stages", SCRIPT)
average_stages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(average_stages)


def test_the_mean_of_two_priors_loads_strictly_as_a_prior(tmp_path, capsys):
    a = tiny.make_stage(tmp_path / "a.safetensors", "prior", tiny.PRIOR, 1, tiny.PRIOR_SPEC)
    b = tiny.make_stage(tmp_path / "b.safetensors", "prior", tiny.PRIOR, 2, tiny.PRIOR_SPEC)
    out = tmp_path / "soup.safetensors"
    assert average_stages.main([str(out), str(a), str(b)]) == 0
    ta, tb, tm = load_file(a), load_file(b), load_file(out)
    assert tm.keys() == ta.keys()
    for k in ta:
        assert tm[k].dtype == ta[k].dtype
        torch.testing.assert_close(tm[k], ((ta[k].float() + tb[k].float()) / 2).to(ta[k].dtype), rtol=0, atol=0)
    assert any(not torch.equal(tm[k], ta[k]) for k in ta)
    prior, _ = checkpoint.build(out, "prior", expect_kind="prior")  # strict: every key and shape
    name, value = next(iter(prior.state_dict().items()))
    torch.testing.assert_close(value, tm[name].float())


def test_files_of_different_configs_or_an_existing_output_are_refused(tmp_path, capsys):
    a = tiny.make_stage(tmp_path / "a.safetensors", "prior", tiny.PRIOR, 1, tiny.PRIOR_SPEC)
    c = tiny.make_stage(tmp_path / "c.safetensors", "unet", tiny.SR, 3, tiny.SR_SPEC)
    out = tmp_path / "soup.safetensors"
    assert average_stages.main([str(out), str(a), str(c)]) == 1
    assert "metadata" in capsys.readouterr().err and not out.exists()
    out.write_bytes(b"mine")
    assert average_stages.main([str(out), str(a), str(a)]) == 1
    assert "not overwritten" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert average_stages.main([str(tmp_path / "x.safetensors"), str(a)]) == 1
    assert "at least two" in capsys.readouterr().err
