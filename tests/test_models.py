"""Stage networks on the tiny configs: forward shapes, masks, and config validation."""

import dataclasses
import importlib.util

import pytest
import torch

import tiny
from unclip_cli.models.prior import Prior
from unclip_cli.models.text_proj import TextProj
from unclip_cli.models.unet import UNet, UNetConfig

B = 2
L = 77  # CLIP context length of the tiny configs


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Speed only: tiny tensors; two OpenMP threads on a busy small machine wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prior():
    return tiny.randomize(Prior(tiny.PRIOR), seed=1).eval()


@pytest.fixture(scope="module")
def decoder():
    return tiny.randomize(UNet(tiny.DECODER), seed=2).eval()


@pytest.fixture(scope="module")
def text_proj():
    return tiny.randomize(TextProj(tiny.TEXT_PROJ), seed=3).eval()


def text_inputs(seed=0, real_tokens=(5, 9)):
    g = torch.Generator().manual_seed(seed)
    D, W = tiny.PRIOR.embedding_dim, tiny.PRIOR.text_width
    mask = torch.zeros(B, L, dtype=torch.bool)
    for i, n in enumerate(real_tokens):
        mask[i, :n] = True
    return dict(text_embed=torch.randn(B, D, generator=g), text_tokens=torch.randn(B, L, W, generator=g),
                text_mask=mask)


def prior_states(prior, x, t, **text):
    """The final-LayerNorm states of every sequence position, [B, 77 + 4, width], and the output."""
    seen = {}
    handle = prior.norm_out.register_forward_hook(lambda m, i, o: seen.setdefault("states", o))
    try:
        with torch.no_grad():
            out = prior(x, t, **text)
    finally:
        handle.remove()
    return seen["states"], out


# --------------------------------------------------------------------------- prior


def test_prior_forward_shape(prior):
    D = tiny.PRIOR.embedding_dim
    x = torch.randn(B, D)
    with torch.no_grad():
        out = prior(x, torch.tensor([3, 700]), **text_inputs())
        out_scalar_t = prior(x, torch.tensor(3), **text_inputs())
    assert out.shape == (B, D) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out_scalar_t[0], out[0])  # a scalar t is broadcast over the batch
    assert not torch.allclose(out_scalar_t[1], out[1])  # and t matters


def test_prior_is_causal(prior):
    """Sequence: 77 text tokens, text embedding (77), time (78), noised embedding (79), query (80)."""
    x = torch.randn(B, tiny.PRIOR.embedding_dim)
    t = torch.tensor([10, 10])
    text = text_inputs(real_tokens=(77, 77))
    base, out = prior_states(prior, x, t, **text)
    assert base.shape == (B, L + 4, tiny.PRIOR.width)

    moved, out2 = prior_states(prior, x + 1.0, t, **text)  # change position 79 only
    torch.testing.assert_close(moved[:, :79], base[:, :79], rtol=0, atol=1e-6)
    assert not torch.allclose(moved[:, 79:], base[:, 79:])
    assert not torch.allclose(out2, out)

    text2 = dict(text, text_embed=text["text_embed"] + 1.0)  # change position 77 only
    moved, _ = prior_states(prior, x, t, **text2)
    torch.testing.assert_close(moved[:, :77], base[:, :77], rtol=0, atol=1e-6)
    assert not torch.allclose(moved[:, 77:], base[:, 77:])

    tokens = text["text_tokens"].clone()
    tokens[:, 40:] += 1.0  # change text tokens 40.. only
    moved, _ = prior_states(prior, x, t, **dict(text, text_tokens=tokens))
    torch.testing.assert_close(moved[:, :40], base[:, :40], rtol=0, atol=1e-6)
    assert not torch.allclose(moved[:, 40:], base[:, 40:])


def test_prior_ignores_padding_tokens(prior):
    x = torch.randn(B, tiny.PRIOR.embedding_dim)
    t = torch.tensor([500, 500])
    text = text_inputs(real_tokens=(5, 9))
    with torch.no_grad():
        out = prior(x, t, **text)
        tokens = text["text_tokens"].clone()
        tokens[0, 5:] = torch.randn(L - 5, tokens.shape[-1]) * 10  # only positions text_mask marks as padding
        tokens[1, 9:] = 0.0
        same = prior(x, t, **dict(text, text_tokens=tokens))
        tokens[0, 4] += 1.0  # a real token
        other = prior(x, t, **dict(text, text_tokens=tokens))
    torch.testing.assert_close(same, out, rtol=0, atol=1e-6)
    assert not torch.allclose(other[0], out[0])
    torch.testing.assert_close(other[1], out[1], rtol=0, atol=1e-6)  # batch elements are independent


def test_prior_normalize_round_trip(prior):
    emb = torch.randn(B, tiny.PRIOR.embedding_dim)
    with torch.no_grad():
        torch.testing.assert_close(prior.denormalize(prior.normalize(emb)), emb)


# --------------------------------------------------------------------------- text_proj and decoder UNet


def test_text_proj_shapes(text_proj):
    cfg = tiny.TEXT_PROJ
    text = text_inputs(real_tokens=(3, 77))
    image_embed = torch.randn(B, cfg.clip_embeddings_dim)
    with torch.no_grad():
        emb, context, mask = text_proj(image_embed, **text)
    n = cfg.clip_extra_context_tokens
    assert emb.shape == (B, cfg.time_embed_dim)
    assert context.shape == (B, n + L, cfg.cross_attention_dim)
    assert mask.shape == (B, n + L) and mask.dtype == torch.bool
    assert mask[:, :n].all()  # the image-embedding tokens are always attended to
    assert torch.equal(mask[:, n:], text["text_mask"])
    null = text_proj.null_image_embed(B, torch.float32)
    assert null.shape == (B, cfg.clip_embeddings_dim)


def test_decoder_forward_shape_with_context_and_learned_variance(decoder, text_proj):
    cfg = tiny.DECODER
    assert cfg.out_channels == 2 * cfg.in_channels  # eps + learned variance channels
    text = text_inputs(real_tokens=(6, 20))
    with torch.no_grad():
        emb, context, cmask = text_proj(torch.randn(B, tiny.TEXT_PROJ.clip_embeddings_dim), **text)
        x = torch.randn(B, cfg.in_channels, 32, 32)
        out = decoder(x, torch.tensor([1, 999]), emb=emb, context=context, context_mask=cmask)
        assert out.shape == (B, cfg.out_channels, 32, 32)
        assert torch.isfinite(out).all()

        # padding context tokens are ignored; real ones are not
        ctx2 = context.clone()
        ctx2[0, 4 + 6:] = 5.0
        same = decoder(x, torch.tensor([1, 999]), emb=emb, context=ctx2, context_mask=cmask)
        ctx2[0, 4] += 1.0
        other = decoder(x, torch.tensor([1, 999]), emb=emb, context=ctx2, context_mask=cmask)
    torch.testing.assert_close(same, out, rtol=0, atol=1e-5)
    assert not torch.allclose(other[0], out[0])


def test_upsampler_forward_shape_with_low_res():
    cfg = tiny.SR
    sr = tiny.randomize(UNet(cfg), seed=4).eval()
    x = torch.randn(B, 3, 64, 64)
    low = torch.randn(B, cfg.in_channels - 3, 64, 64)
    with torch.no_grad():
        out = sr(x, torch.tensor(5), low_res=low)
        out2 = sr(x, torch.tensor(5), low_res=low + 1)
    assert out.shape == (B, cfg.out_channels, 64, 64)
    assert not torch.allclose(out, out2)  # the low-res image is used


# --------------------------------------------------------------------------- config validation


def test_unet_config_attention_length_must_match_levels():
    with pytest.raises(ValueError, match="attention"):
        UNetConfig(block_out_channels=(8, 16, 32), attention=(False, True))
    with pytest.raises(ValueError, match="attention"):
        UNetConfig(block_out_channels=(8,), attention=(False, True))


def test_unet_config_from_json_lists_is_hashable_and_equal():
    cfg = UNetConfig(block_out_channels=[8, 16], attention=[False, True], norm_num_groups=4, context_dim=None)
    assert cfg.block_out_channels == (8, 16) and cfg.attention == (False, True)
    assert cfg == UNetConfig(block_out_channels=(8, 16), attention=(False, True), norm_num_groups=4, context_dim=None)
    hash(cfg)


# --------------------------------------------------------------------------- speed paths

def test_channels_last_unet_computes_the_same(decoder, text_proj):
    """A UNet moved to channels_last (what --dtype bf16/fp16 does on the CPU) gives the contiguous one's output
    to fp32 round-off, and stays channels_last through its attention blocks (no layout copies)."""
    import copy

    text = text_inputs(real_tokens=(6, 20))
    cl = copy.deepcopy(decoder).to_channels_last()
    seen = []
    hooks = [a.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
             for blk in cl.down_blocks if blk.attentions is not None for a in blk.attentions]
    with torch.no_grad():
        emb, context, cmask = text_proj(torch.randn(B, tiny.TEXT_PROJ.clip_embeddings_dim), **text)
        x = torch.randn(B, 3, 32, 32)
        ref = decoder(x, torch.tensor([3, 700]), emb=emb, context=context, context_mask=cmask)
        out = cl(x, torch.tensor([3, 700]), emb=emb, context=context, context_mask=cmask)
    for h in hooks:
        h.remove()
    assert seen and all(seen)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_context_keys_and_values_are_reused_only_for_the_same_unchanged_context(decoder, text_proj):
    text = text_inputs(real_tokens=(6, 20))
    calls = []
    attn = next(a for blk in decoder.down_blocks if blk.attentions is not None for a in blk.attentions)
    hook = attn.add_k_proj.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        with torch.no_grad():
            emb, context, cmask = text_proj(torch.randn(B, tiny.TEXT_PROJ.clip_embeddings_dim), **text)
            x = torch.randn(B, 3, 32, 32)
            a = decoder(x, torch.tensor(500), emb=emb, context=context, context_mask=cmask)
            b = decoder(x, torch.tensor(500), emb=emb, context=context, context_mask=cmask)
            assert len(calls) == 1 and torch.equal(a, b)  # second step: projections reused
            context[0, 4] += 1.0  # changed in place: computed again, and the output follows
            c = decoder(x, torch.tensor(500), emb=emb, context=context, context_mask=cmask)
            assert len(calls) == 2 and not torch.allclose(c[0], a[0])
            d = decoder(x, torch.tensor(500), emb=emb, context=context.clone(), context_mask=cmask)
            assert len(calls) == 3 and torch.equal(c, d)
            e = decoder(x, torch.tensor(500), emb=emb, context=context, context_mask=cmask)  # the clone was cached
            assert len(calls) == 4 and torch.equal(e, c)
            with torch.no_grad():  # a weight changed in place (as an optimizer step does): computed again
                attn.add_k_proj.weight.mul_(1.5)
            f = decoder(x, torch.tensor(500), emb=emb, context=context, context_mask=cmask)
            attn.add_k_proj.weight.div_(1.5)
            assert len(calls) == 5 and not torch.allclose(f, c)
        with torch.inference_mode():
            g = decoder(x, torch.tensor(500), emb=emb, context=context.clone(), context_mask=cmask)
        assert len(calls) == 6 and torch.allclose(g, c, atol=1e-5)  # weights back to c's, to round-off
        # with autograd, after a no-grad call with this very context: computed again, and gradients reach the weights
        was = attn.add_k_proj.weight.requires_grad
        attn.add_k_proj.weight.requires_grad_(True)
        try:
            decoder(x, torch.tensor(500), emb=emb, context=context, context_mask=cmask).sum().backward()
            assert len(calls) == 7 and attn.add_k_proj.weight.grad is not None
        finally:
            attn.add_k_proj.weight.requires_grad_(was)
            attn.add_k_proj.weight.grad = None
    finally:
        hook.remove()


def test_decoder_traces_into_one_graph_for_torch_compile(decoder, text_proj):
    """torch.compile sees the whole decoder as one graph (fullgraph=True fails on any graph break, as the
    K/V cache's is_inference() check once caused in every attention block) and computes what eager does."""
    import copy

    torch._dynamo.reset()
    text = text_inputs(real_tokens=(6, 20))
    net = copy.deepcopy(decoder)
    compiled = torch.compile(net, backend="eager", fullgraph=True, dynamic=False)
    try:
        with torch.no_grad():
            emb, context, cmask = text_proj(torch.randn(B, tiny.TEXT_PROJ.clip_embeddings_dim), **text)
            x = torch.randn(B, 3, 32, 32)
            ref = decoder(x, torch.tensor([3, 700]), emb=emb, context=context, context_mask=cmask)
            for _ in range(2):  # the second call must not find a cached K/V from the first inside the graph
                out = compiled(x, torch.tensor([3, 700]), emb=emb, context=context, context_mask=cmask)
                torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        with torch.inference_mode():  # as gpu_karlo compiles
            out = compiled(x, torch.tensor([3, 700]), emb=emb, context=context.clone(), context_mask=cmask)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_writes_in_place_with_the_same_bits_as_autograd(decoder, text_proj, layout, dtype):
    """Without autograd the res blocks reuse their tensors (SiLU, scale/shift, residual in place): bit for bit
    what the autograd path computes, with and without attention (decoder, upsampler) and scale/shift or add."""
    import copy

    text = text_inputs(real_tokens=(6, 20))
    with torch.no_grad():
        emb, context, cmask = text_proj(torch.randn(B, tiny.TEXT_PROJ.clip_embeddings_dim), **text)
    nets = [(copy.deepcopy(decoder), dict(emb=emb, context=context, context_mask=cmask), 3),
            (tiny.randomize(UNet(tiny.SR), seed=4).eval(), dict(low_res=torch.randn(B, tiny.SR.in_channels - 3, 32, 32)), 3),
            (tiny.randomize(UNet(dataclasses.replace(tiny.SR, scale_shift=True)), seed=5).eval(),
             dict(low_res=torch.randn(B, tiny.SR.in_channels - 3, 32, 32)), 3)]
    for net, kw, c in nets:
        net = net.to(dtype)
        if layout == "channels_last":
            net.to_channels_last()
        kw = {k: v.to(dtype) if v.is_floating_point() else v for k, v in kw.items()}
        x = torch.randn(B, c, 32, 32).to(dtype)
        with torch.enable_grad():
            ref = net(x, torch.tensor([3, 700]), **kw)
        with torch.no_grad():
            out = net(x, torch.tensor([3, 700]), **kw)
        with torch.inference_mode():
            out2 = net(x, torch.tensor([3, 700]), **kw)
        assert torch.equal(out, ref.detach()) and torch.equal(out2, ref.detach())


# open_clip's optional imports -----------------------------------------------------------------

_IMPORT_PROBE = """
import importlib.util, json, sys
{pre}
from unclip_cli.models import clip
clip.OPTIONAL_IMPORTS = {held!r}
oc = clip.import_open_clip()
seen = {{name: name in sys.modules for name in {held!r}}}
import open_clip.hf_model as hf, open_clip.timm_model as tm
reimported = {{name: importlib.import_module(name).__name__ for name in {held!r}}}
print(json.dumps({{"seen": seen, "hf_has_transformers": hf.transformers is not None, "has_timm": tm.timm is not None,
                   "clip": oc.model.CLIP.__name__, "reimported": reimported}}))
"""


def _probe(pre: str = "", held=("transformers", "timm")) -> dict:
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _IMPORT_PROBE.format(pre=pre, held=tuple(held))], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_open_clip_is_imported_without_its_optional_libraries_which_stay_importable():
    held = ["timm"] + (["transformers"] if importlib.util.find_spec("transformers") else [])
    got = _probe(held=held)
    assert got["seen"] == {name: False for name in held}  # open_clip came in without them
    assert not got["has_timm"] and got["clip"] == "CLIP"
    if "transformers" in held:
        assert not got["hf_has_transformers"]
    assert got["reimported"] == {name: name for name in held}  # and they import normally afterwards


def test_open_clip_keeps_a_library_the_process_already_loaded():
    got = _probe(pre="import timm")
    assert got["seen"]["timm"] and got["has_timm"]


def test_an_open_clip_that_needs_a_held_back_library_is_imported_plainly():
    # torchvision is imported unconditionally by open_clip: holding it back must not break the import
    got = _probe(held=("torchvision",))
    assert got["clip"] == "CLIP" and got["seen"] == {"torchvision": True}


@pytest.mark.parametrize("tower,key", [("text_cfg", "hf_model_name"), ("vision_cfg", "timm_model_name")])
def test_a_clip_config_naming_a_foreign_tower_is_refused_in_one_line(tower, key):
    from unclip_cli.errors import UnclipError
    from unclip_cli.weights import checkpoint

    config = dict(tiny.CLIP)
    config[tower] = {**config[tower], key: "some-model"}
    with pytest.raises(UnclipError, match=f"stage 'clip'.*{tower}.*Hugging Face") as e:
        checkpoint.instantiate("clip", config, "clip")
    assert "\n" not in str(e.value)


def test_training_a_clip_with_a_foreign_tower_is_a_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from unclip_cli.cli.app import app

    cfg = tmp_path / "clip.toml"
    cfg.write_text('[model]\nembed_dim = 32\n[model.vision_cfg]\nimage_size = 32\npatch_size = 8\n'
                   '[model.text_cfg]\nhf_model_name = "roberta-base"\n[data]\nfolder = "nowhere"\n')
    r = CliRunner().invoke(app, ["train", "clip", "-c", str(cfg), "-o", str(tmp_path / "out")])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.exception
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "text_cfg" in err and "Traceback" not in err, err
