"""Nothing lost, nothing half-written: SIGTERM / SIGINT mid-run, a full disk, running out of memory.

The signal tests run the real CLI in a subprocess on the tiny model (64 px, a few decoder steps per
image, one image per chunk) and signal it once the first images are on disk; the others raise the
signal or the fault in process (CliRunner) at a chosen point.
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from unclip_cli.cli.app import app

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--prior-steps", "1", "--decoder-steps", "2", "--size", "64"]
PNG_NAME = re.compile(r"^\d{5}-\d+-[a-z0-9-]+\.png$")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_complete_pngs(out: Path) -> list[Path]:
    """Every file in `out` is a finished PNG (CRCs checked, pixels decoded); no temporary file."""
    files = sorted(out.iterdir())
    for p in files:
        assert PNG_NAME.match(p.name), f"unexpected file {p.name}"
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            im.load()
            assert im.size == (64, 64)
    return files


def start(home: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "UNCLIP_HOME": str(home), "UNCLIP_QUIET": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "unclip_cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_after(proc: subprocess.Popen, out: Path, files: int, signum: int, limit: float = 600) -> tuple[int, str, str]:
    """Wait until `files` PNGs are in `out`, send `signum`, return (exit status, stdout, stderr)."""
    deadline = time.monotonic() + limit
    while len(list(out.glob("*.png"))) < files:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"the run ended or stalled before {files} images (status {proc.returncode}): {stderr[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def test_done_when_20_prompts_one_bad_line_sigterm_halfway(home, tmp_path):
    """The issue's "Done when": exactly the finished images, each complete and readable, and no other file."""
    prompts = [f"a {c} dot number {i}" for i, c in enumerate(["red", "green", "blue", "yellow"] * 5)]
    prompts[7] = "a broken\x07line"  # a control character: the bad line (line 8)
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out"
    proc = start(home, "generate", "--prompts-file", tmp_path / "prompts.txt", "--seed", 100, "--batch-size", 1,
                 "--prior-steps", 1, "--decoder-steps", 6, "--size", 64, "-o", out)
    status, stdout, stderr = signal_after(proc, out, 9, signal.SIGTERM)
    assert status == 143, stderr
    assert "Traceback" not in stderr
    files = assert_complete_pngs(out)
    assert 9 <= len(files) < 19, "stopped halfway: some images written, not all"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"error: {tmp_path / 'prompts.txt'} line 8: the line contains a control character")
    assert lines[-1] == f"interrupted: {len(files)} images written to {out}", lines
    assert sorted(stdout.split()) == [str(p) for p in files]  # each path printed as its file was written
    good = [p for i, p in enumerate(prompts) if i != 7]
    for k, path in enumerate(files):  # in order, the first prompts of the file, each with its seed
        params = json.loads(Image.open(path).info["unclip"])
        assert params["prompt"] == good[k]
        assert params["seed"] == 100 + prompts.index(good[k])


def test_sigint_stops_generate_with_130(home, tmp_path):
    out = tmp_path / "out"
    proc = start(home, "generate", "a red dot", "-n", 20, "--batch-size", 1, "--prior-steps", 1,
                 "--decoder-steps", 6, "--size", 64, "-o", out, "--json")
    status, stdout, stderr = signal_after(proc, out, 1, signal.SIGINT)
    assert status == 130, stderr
    files = assert_complete_pngs(out)
    assert 1 <= len(files) < 20
    noun = "image" if len(files) == 1 else "images"
    assert [line for line in stderr.splitlines() if line.strip()] == [f"interrupted: {len(files)} {noun} written to {out}"]
    res = json.loads(stdout)  # --json still says what was written
    assert res["interrupted"] == "SIGINT" and sorted(im["path"] for im in res["images"]) == [str(p) for p in files]


# --------------------------------------------------------------------------- signals raised in process


def kill_on_call(monkeypatch, module, name: str, call: int, signum: int) -> None:
    """Send this process `signum` when module.name is called for the `call`-th time."""
    calls, real = [], getattr(module, name)

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("verb, signum, code", [("vary", signal.SIGTERM, 143), ("edit", signal.SIGINT, 130),
                                                ("generate", signal.SIGTERM, 143)])
def test_signal_mid_run_keeps_the_finished_images(home, tmp_path, monkeypatch, verb, signum, code):
    from test_cli import verb_args
    from unclip_cli.pipeline import cascade

    kill_on_call(monkeypatch, cascade, "decoder_stage", 3, signum)  # during the third image
    out = tmp_path / "out"
    args = verb_args(verb, tmp_path, 64) + ["--batch-size", 1, "-n", 4, "--decoder-steps", 2, "--size", 64]
    r = invoke(*args, *(["--prior-steps", 1] if verb != "vary" else []), "-o", out)
    assert r.exit_code == code, r.stderr
    assert len(assert_complete_pngs(out)) == 2
    assert r.stderr.strip() == f"interrupted: 2 images written to {out}"


MIX_NAME = re.compile(r"^\d{5}-(\d+)-mix(-[0-9.]+)?\.(png|gif)$")


def mix_files(out: Path) -> dict[int, list[str]]:
    """The files of `unclip mix` in `out` by seed, each complete (PNG CRCs checked; GIFs decoded)."""
    series = {}
    for p in sorted(out.iterdir()):
        m = MIX_NAME.match(p.name)
        assert m, f"unexpected file {p.name}"
        with Image.open(p) as im:
            im.load()
        series.setdefault(int(m.group(1)), []).append(p.suffix)
    return {seed: sorted(kinds) for seed, kinds in series.items()}


def two_images(tmp_path: Path) -> tuple[Path, Path]:
    """Two different pictures for `unclip mix` (images, not texts: no prior, and never the same embedding)."""
    from test_cli import source_image

    a = source_image(tmp_path / "a.png", 64)
    Image.open(a).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "b.png")
    return a, tmp_path / "b.png"


def test_signal_mid_mix_keeps_the_finished_series(home, tmp_path, monkeypatch):
    """`unclip mix` is written series by series: a signal during the second series' frames keeps the first
    series whole (its frames and GIF), drops the second, and says what was written."""
    from unclip_cli.pipeline import cascade

    kill_on_call(monkeypatch, cascade, "decoder_stage", 3, signal.SIGTERM)  # series 2, frame 1
    out = tmp_path / "out"
    r = invoke("mix", *two_images(tmp_path), "--frames", 2, "-n", 3, "--seed", 7, "--batch-size", 1, *FAST, "-o", out,
               "--json")
    assert r.exit_code == 143, r.stderr
    assert mix_files(out) == {7: [".gif", ".png", ".png"]}
    assert r.stderr.strip() == f"interrupted: 2 images and 1 GIF written to {out}"
    res = json.loads(r.stdout)
    assert res["interrupted"] == "SIGTERM" and [im["ratio"] for im in res["images"]] == [0, 1] and len(res["gifs"]) == 1


def test_mix_is_written_chunk_by_chunk(home, tmp_path, monkeypatch):
    """Each chunk's series is on disk before the next chunk samples (by default one series a chunk here:
    8 images a chunk / 8 frames); a signal while a series is being written waits until the whole series is."""
    from unclip_cli.pipeline import cascade, images

    out, on_disk = tmp_path / "out", []
    decoder_stage = cascade.decoder_stage
    monkeypatch.setattr(cascade, "decoder_stage", lambda *a, **k: on_disk.append(len(list(out.glob("*")))
                                                                                 if out.exists() else 0)
                        or decoder_stage(*a, **k))
    a, b = two_images(tmp_path)
    assert invoke("mix", a, b, "--frames", 8, "-n", 2, *FAST, "-o", out).exit_code == 0
    assert on_disk == [0] * 8 + [9] * 8
    real = images._write_synced
    monkeypatch.setattr(images, "_write_synced",
                        lambda path, data: (os.kill(os.getpid(), signal.SIGINT), real(path, data))[1])
    r = invoke("mix", a, b, "--frames", 3, "-n", 2, "--seed", 4, *FAST, "-o", tmp_path / "sig")
    assert r.exit_code == 130 and mix_files(tmp_path / "sig") == {4: [".gif", ".png", ".png", ".png"]}
    assert r.stderr.strip() == f"interrupted: 3 images and 1 GIF written to {tmp_path / 'sig'}"


def test_a_signal_during_a_write_lets_the_file_finish(home, tmp_path, monkeypatch):
    """A signal that arrives while a PNG is being written waits until the file is in place and counted."""
    from unclip_cli.pipeline import images

    real = images._write_synced
    monkeypatch.setattr(images, "_write_synced",
                        lambda path, data: (os.kill(os.getpid(), signal.SIGTERM), real(path, data))[1])
    out = tmp_path / "out"
    r = invoke("generate", "a dot", "-n", 3, *FAST, "-o", out)
    assert r.exit_code == 143
    assert len(assert_complete_pngs(out)) == 1
    assert r.stderr.strip() == f"interrupted: 1 image written to {out}"


def test_eval_stops_cleanly(home, tmp_path, monkeypatch):
    from unclip_cli.shapes import evaluate as ev

    kill_on_call(monkeypatch, ev, "run_mode", 1, signal.SIGTERM)
    out = tmp_path / "eval.json"
    r = invoke("eval", "--per-prompt", 1, "--prior-steps", 1, "--decoder-steps", 1, "--out", out)
    assert r.exit_code == 143
    assert r.stderr.strip().startswith("interrupted: no results written")
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


# --------------------------------------------------------------------------- full disk


def fail_writes(monkeypatch, after: int, call: str = "write") -> None:
    """os.write / os.fsync on unclip's temporary files raise ENOSPC once `after` files are complete."""
    done, real = set(), getattr(os, call)

    def failing(fd, *a):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".unclip-tmp-" in name:
            if len(done) >= after and name not in done:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done.add(name)
        return real(fd, *a)

    monkeypatch.setattr(os, call, failing)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("call", ["write", "fsync"])
def test_full_disk_is_one_line_and_leaves_no_partial_file(home, tmp_path, monkeypatch, call):
    out = tmp_path / "out"
    fail_writes(monkeypatch, 0, call)
    r = invoke("generate", "a dot", "-n", 2, *FAST, "-o", out)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: no space left on device writing to {out}"
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_disk_full_after_some_images_keeps_them(home, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fail_writes(monkeypatch, 2)
    r = invoke("generate", "a dot", "-n", 4, "--batch-size", 1, *FAST, "-o", out)
    assert r.exit_code == 1
    assert r.stderr.strip() == f"error: no space left on device writing to {out}; 2 images written to {out} before"
    assert len(assert_complete_pngs(out)) == 2


# --------------------------------------------------------------------------- out of memory


@pytest.mark.parametrize("where, error, stage", [
    ("prior", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "prior"),
    ("unet", RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"), "decoder"),
    ("unet", MemoryError(), "decoder"),
])
def test_out_of_memory_names_the_stage_and_the_fixes(home, tmp_path, monkeypatch, where, error, stage):
    from unclip_cli.models import prior, unet

    def boom(*a, **k):
        raise error

    monkeypatch.setattr(prior.Prior if where == "prior" else unet.UNet, "forward", boom)
    r = invoke("generate", "a dot", *FAST, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"error: out of memory in the {stage} stage (cpu): try --dtype bf16, a smaller --size, "
                           "a smaller --image-candidates, or another --device"), line
    assert list((tmp_path / "out").iterdir()) == []


def test_other_runtime_errors_are_not_called_out_of_memory(home, tmp_path, monkeypatch):
    from unclip_cli.models import unet

    def boom(*a, **k):
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(unet.UNet, "forward", boom)
    r = invoke("generate", "a dot", *FAST, "-o", tmp_path / "out")
    assert isinstance(r.exception, RuntimeError) and "out of memory" not in r.stderr


# --------------------------------------------------------------------------- two writers, one folder


def _write_many(outdir: str, tag: int) -> None:
    from unclip_cli.pipeline import images

    for i in range(25):
        images.save_new(Path(outdir), f"{tag}-x", f"{tag}:{i}".encode() * 1000)


def test_two_processes_writing_into_one_folder_never_clobber(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), tag)) for tag in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == 50 and all(re.match(r"^\d{5}-[12]-x\.png$", p.name) for p in files)
    contents = {p.read_bytes() for p in files}
    assert contents == {f"{tag}:{i}".encode() * 1000 for tag in (1, 2) for i in range(25)}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_disk_full_mid_series_keeps_whole_series_only(home, tmp_path, monkeypatch):
    """A mix series is written whole or not at all: a full disk at the second series' second frame removes its
    first frame and keeps the first series (3 frames and the GIF)."""
    out = tmp_path / "out"
    fail_writes(monkeypatch, 5)
    r = invoke("mix", *two_images(tmp_path), "--frames", 3, "-n", 2, "--seed", 1, "--batch-size", 1, *FAST, "-o", out)
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: no space left on device writing to {out}; "
                                f"3 images and 1 GIF written to {out} before")
    assert mix_files(out) == {1: [".gif", ".png", ".png", ".png"]}
