"""transformers CLIP -> open_clip CLIP conversion gives identical outputs (tiny random models)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection,  # noqa: E402
                          CLIPVisionConfig, CLIPVisionModelWithProjection)

from unclip_cli.models.clip import AbsentTower  # noqa: E402
from unclip_cli.weights.hf_clip import convert_state_dict, load_hf_clip, open_clip_config_from_hf  # noqa: E402

PROJ = 32
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=49408,
            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            bos_token_id=0, pad_token_id=1, eos_token_id=2)  # as in openai / Karlo config.json
VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
              image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
ATOL = 1e-5


def _randomize(model, seed=0):
    """Seeded noise on every parameter so a dropped/swapped tensor cannot hide behind its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _hf_clip(text=TEXT, vision=VISION, seed=0):
    """CLIPModel plus the two *WithProjection towers loaded from its weights (reference outputs)."""
    clip = _randomize(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJ)), seed)
    sd = clip.state_dict()
    tm = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=PROJ)).eval()
    vm = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision, projection_dim=PROJ)).eval()
    tm.load_state_dict({k: v for k, v in sd.items() if k.startswith("text_") and "position_ids" not in k})
    vm.load_state_dict({k: v for k, v in sd.items() if k.startswith(("vision_", "visual_")) and "position_ids" not in k})
    return sd, tm, vm


def _tokens():
    tok = open_clip.get_tokenizer("ViT-L-14")  # bundled BPE; pads with 0 like Karlo
    ids = tok(["a photo of a cat", "an oil painting of a lighthouse at dusk, highly detailed",
               "", "word " * 100])  # empty prompt, and one truncated so eot sits at position 76
    assert ids.shape == (4, 77) and (ids == 0).any()
    return ids


def _oc_text(model, ids):
    x = model.token_embedding(ids) + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    return model.ln_final(x), model.encode_text(ids)


def _pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _assert_text_matches(model, tm, ids):
    with torch.no_grad():
        ref = tm(input_ids=ids)
        states, pooled = _oc_text(model, ids)
    torch.testing.assert_close(states, ref.last_hidden_state, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(pooled, ref.text_embeds, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clipmodel_layout_matches_both_towers(act):
    text, vision = {**TEXT, "hidden_act": act}, {**VISION, "hidden_act": act}
    sd, tm, vm = _hf_clip(text, vision)
    model = load_hf_clip(text, vision, PROJ, sd)
    assert model.text_pool_type == "argmax" and model.transformer.resblocks[0].mlp.gelu.__class__.__name__ == (
        "QuickGELU" if act == "quick_gelu" else "GELU")
    _assert_text_matches(model, tm, _tokens())
    px = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(px), vm(pixel_values=px).image_embeds, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(model.logit_scale, sd["logit_scale"])


def test_karlo_text_only_layout():
    sd, tm, _ = _hf_clip()
    text_sd = tm.state_dict()  # text_model.* + text_projection.weight, no logit_scale
    model = load_hf_clip(TEXT, None, PROJ, text_sd)
    assert isinstance(model.visual, AbsentTower)
    _assert_text_matches(model, tm, _tokens())
    with pytest.raises(RuntimeError, match="without a vision tower"):
        model.encode_image(_pixels())
    # bare CLIPTextModel keys (no "text_model." prefix) convert identically; legacy position_ids are dropped
    bare = {k.removeprefix("text_model."): v for k, v in text_sd.items()}
    bare["embeddings.position_ids"] = torch.arange(77)[None]
    ref = convert_state_dict(text_sd)
    got = convert_state_dict(bare)
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_separate_towers_merged_like_karlo_image_variation():
    sd, tm, vm = _hf_clip()
    merged = {**tm.state_dict(), **vm.state_dict()}
    model = load_hf_clip(TEXT, VISION, PROJ, merged)
    _assert_text_matches(model, tm, _tokens())
    px = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(px), vm(pixel_values=px).image_embeds, atol=ATOL, rtol=ATOL)


def test_eos_pooling_for_non_legacy_eos_id():
    text = {**TEXT, "eos_token_id": 500}  # pooling at first id 500, not at the argmax id
    _, tm, _ = _hf_clip(text)
    model = load_hf_clip(text, None, PROJ, tm.state_dict())
    assert model.text_pool_type == "eos" and model.text_eos_id == 500
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[:, :6] = torch.tensor([[49406, 320, 500, 900, 49407, 500], [49406, 9000, 7, 500, 49407, 12]])
    _assert_text_matches(model, tm, ids)


def test_config_mapping():
    cfg = open_clip_config_from_hf({**TEXT, "layer_norm_eps": 1e-6}, VISION, PROJ)
    assert cfg["embed_dim"] == PROJ and cfg["quick_gelu"] is True
    assert cfg["text_cfg"]["norm_kwargs"] == {"eps": 1e-6} and cfg["vision_cfg"]["norm_kwargs"] == {"eps": 1e-5}
    assert cfg["vision_cfg"]["head_width"] == 16 and cfg["text_cfg"]["heads"] == 4
    assert cfg["text_cfg"]["context_length"] == 77 and cfg["text_cfg"]["mlp_ratio"] == 4.0
    with pytest.raises(ValueError, match="hidden_act"):
        open_clip_config_from_hf(TEXT, {**VISION, "hidden_act": "gelu"}, PROJ)
    with pytest.raises(ValueError, match="text tower"):
        open_clip_config_from_hf(None, VISION, PROJ)


def test_one_swapped_tensor_breaks_equivalence():
    sd, tm, vm = _hf_clip()
    model = load_hf_clip(TEXT, VISION, PROJ, sd)
    oc_sd = model.state_dict()
    for a, b in [("transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.1.mlp.c_fc.weight"),
                 ("visual.transformer.resblocks.0.ln_1.bias", "visual.transformer.resblocks.1.ln_1.bias")]:
        bad = dict(oc_sd, **{a: oc_sd[b], b: oc_sd[a]})
        model.load_state_dict(bad, strict=True)
        ids, px = _tokens(), _pixels()
        with torch.no_grad():
            ok_text = torch.allclose(_oc_text(model, ids)[0], tm(input_ids=ids).last_hidden_state, atol=ATOL)
            ok_img = torch.allclose(model.encode_image(px), vm(pixel_values=px).image_embeds, atol=ATOL)
        assert not (ok_text and ok_img), f"swapping {a} <-> {b} went unnoticed"
        model.load_state_dict(oc_sd)
    # q/k fused in the wrong order is caught too
    qk = "text_model.encoder.layers.1.self_attn.{}_proj.weight"
    swapped = load_hf_clip(TEXT, VISION, PROJ, dict(sd, **{qk.format("q"): sd[qk.format("k")],
                                                          qk.format("k"): sd[qk.format("q")]}))
    with torch.no_grad():
        assert not torch.allclose(_oc_text(swapped, _tokens())[1], tm(input_ids=_tokens()).text_embeds, atol=ATOL)


def test_leftover_and_missing_keys_raise():
    sd, _, _ = _hf_clip()
    with pytest.raises(ValueError, match=r"unexpected keys \['text_model.encoder.layers.0.self_attn.extra'\]"):
        convert_state_dict(dict(sd, **{"text_model.encoder.layers.0.self_attn.extra": torch.zeros(1)}))
    for gone in ["vision_model.post_layernorm.bias", "text_model.encoder.layers.0.self_attn.v_proj.bias",
                 "text_projection.weight", "visual_projection.weight"]:
        with pytest.raises(ValueError, match=gone.replace(".", r"\.")):
            convert_state_dict({k: v for k, v in sd.items() if k != gone})
    # a whole middle layer missing is reported, not silently shortened
    no_l0 = {k: v for k, v in sd.items() if not k.startswith("vision_model.encoder.layers.0.")}
    with pytest.raises(ValueError, match=r"vision_model\.encoder\.layers\.0\.mlp\.fc1\.weight"):
        convert_state_dict(no_l0)
    with pytest.raises(ValueError, match="vision tower weights"):
        load_hf_clip(TEXT, None, PROJ, sd)
