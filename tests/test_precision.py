"""Half precision: every verb runs in bf16 and fp16 on the CPU, the sampler's arithmetic stays float32,
weights are cast as they are read, and fp32 is unchanged."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tiny
from test_cli import FAST, invoke, mask_image, pixels, run_ok, source_image
from unclip_cli.diffusion import gaussian as D, samplers as S
from unclip_cli.diffusion.spec import DiffusionSpec
from unclip_cli.weights import checkpoint


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_every_verb_runs_through_the_upsamplers_in_half_precision(home, tmp_path, dtype):
    """Antialiased bicubic upsampling has no bf16 CPU kernel: the upsampler stage used to stop with a traceback."""
    out = run_ok("generate", "a cat", "--size", 1024, "--dtype", dtype, *FAST, "-s", 1, "-o", tmp_path / "g")
    full = run_ok("generate", "a cat", "--size", 1024, "--dtype", "fp32", *FAST, "-s", 1, "-o", tmp_path / "g32")
    half, ref = pixels(out["images"][0]["path"]).astype(int), pixels(full["images"][0]["path"]).astype(int)
    assert half.shape == ref.shape == (1024, 1024, 3)
    assert np.abs(half - ref).mean() < 20  # the same picture, within half-precision round-off
    src = source_image(tmp_path / "src.png", 256)
    run_ok("vary", src, "--size", 256, "--dtype", dtype, *FAST[2:], "-o", tmp_path / "v")
    mask, edited = mask_image(tmp_path / "m.png", 256)
    e = run_ok("edit", src, "a dog", "--mask", mask, "--size", 256, "--dtype", dtype, *FAST, "-o", tmp_path / "e")
    kept = ~edited
    assert np.array_equal(pixels(e["images"][0]["path"])[kept], pixels(src)[kept])


def test_denoiser_runs_the_network_in_its_dtype_and_the_math_in_float32():
    seen = []

    def net(x, t):
        seen.append(x.dtype)
        return (x * 0.5).to(torch.bfloat16)

    spec = DiffusionSpec(prediction="epsilon", clamp=None)
    x = torch.randn(1, 3, 4, 4)
    pred = S.Denoiser(net, spec, torch.bfloat16)(x, 999)
    assert seen == [torch.bfloat16] and pred.x0.dtype == torch.float32
    eps = (x.to(torch.bfloat16) * 0.5).float()
    torch.testing.assert_close(pred.x0, D.x0_from_eps(D.schedule_of(spec), x, 999, eps))  # 1/sqrt(abar) ~ 2e4
    guided = S.guided(lambda x2, t: torch.cat([x2[:1], x2[1:] * 2]).to(torch.bfloat16), 3.0)(x, 5)
    assert guided.dtype == torch.float32


def test_weights_are_cast_as_they_are_read(tmp_path):
    path = tiny.make_stage(tmp_path / "sr.safetensors", "unet", tiny.SR, seed=1, diffusion=tiny.SR_SPEC)
    tensors = checkpoint.read_tensors(path, "sr256", dtype=torch.bfloat16)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    module, _ = checkpoint.build(path, "sr256", dtype=torch.bfloat16, expect_kind="unet")
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


def test_bad_dtype_is_one_line(home, tmp_path):
    r = invoke("generate", "a cat", "--dtype", "fp8", "-o", tmp_path)
    assert r.exit_code == 1 and r.stderr.strip().startswith("error: --dtype")


def test_auto_dtype_follows_the_cpu(tmp_path, monkeypatch):
    from unclip_cli.cli import run as runner

    monkeypatch.undo()  # conftest makes every CPU look fp32-only

    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n")
    assert runner.native_bf16_cpu(str(with_bf16)) and not runner.native_bf16_cpu(str(without))
    assert not runner.native_bf16_cpu(str(tmp_path / "missing"))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runner, "native_bf16_cpu", lambda: True)
    assert runner.pick_dtype("auto", cpu) == torch.bfloat16 and runner.pick_dtype("auto", cuda) == torch.float16
    assert runner.pick_dtype("fp32", cpu) == torch.float32
    monkeypatch.setattr(runner, "native_bf16_cpu", lambda: False)
    assert runner.pick_dtype("auto", cpu) == torch.float32
    assert runner.pick_dtype("auto", torch.device("mps")) == torch.float32


def test_half_precision_unets_run_channels_last_on_the_cpu(home):
    from unclip_cli.pipeline import stages as stages_mod

    for dtype, expect in ((torch.bfloat16, True), (torch.float16, True), (torch.float32, False)):
        stages, _ = stages_mod.open_model(None, torch.device("cpu"), dtype, 256)
        for name in ("decoder", "sr256"):
            unet = stages.get(name)
            convs = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
            assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == expect for w in convs)
            assert all(not w.is_contiguous() for w in convs) == expect
            assert {p.dtype for p in unet.parameters()} == {dtype}
            stages.release(name)


def test_png_and_json_record_dtype_and_spacing(home, tmp_path):
    from unclip_cli.pipeline import images

    out = run_ok("generate", "a cat", "--dtype", "bf16", "--sampler", "dpmpp_2m", "--spacing", "logsnr", *FAST,
                 "-s", 3, "-o", tmp_path)
    params, text = images.read_params(out["images"][0]["path"])
    assert "Schedule type: logsnr" in text and "Precision: bf16" in text
    assert params["dtype"] == "bf16" and params["spacing"] == "logsnr" and params["sampler"] == "dpmpp_2m"
    r = invoke("generate", "a cat", "--spacing", "karras", *FAST, "-o", tmp_path / "x")
    assert r.exit_code == 1 and r.stderr.strip() == "error: --spacing must be uniform or logsnr, got 'karras'"


_HUGE_PAGES_CHILD = """
import os, sys
from unclip_cli.cli.app import main
assert 'torch' not in sys.modules
sys.argv = ['unclip', '--help']
try:
    main()
except SystemExit:
    pass
import torch
t = torch.empty(8 << 20, dtype=torch.uint8)
p, flags = t.data_ptr(), None
for line in open('/proc/self/smaps'):
    head = line.split()
    if '-' in head[0] and len(head[0].split('-')) == 2 and all(c in '0123456789abcdef-' for c in head[0]):
        lo, hi = (int(v, 16) for v in head[0].split('-'))
        inside = lo <= p < hi
    elif inside and head[0] == 'VmFlags:':
        flags = head[1:]
print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'hg' in (flags or []))
"""


def _large_tensor_advice(env: dict) -> tuple[str, str]:
    """(THP_MEM_ALLOC_ENABLE, whether an 8 MB tensor's mapping is marked for huge pages) after the CLI's main."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    out = subprocess.run([sys.executable, "-c", _HUGE_PAGES_CHILD], capture_output=True, text=True, check=True, env=env)
    setting, huge = out.stdout.splitlines()[-1].split()
    return setting, huge


@pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"),
                    reason="no transparent huge pages (torch's huge-page allocation is Linux-only)")
def test_the_cli_backs_large_tensors_with_huge_pages_unless_the_user_says_not():
    assert _large_tensor_advice({}) == ("1", "True")  # madvise(MADV_HUGEPAGE): "hg" in the mapping's VmFlags
    assert _large_tensor_advice({"THP_MEM_ALLOC_ENABLE": "0"}) == ("0", "False")
