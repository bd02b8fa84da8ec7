"""Downloads that go wrong, against the local stand-in Hub (tests/hubserver.py): a pull killed midway, a corrupt
or truncated file in the Hugging Face cache, a corrupted transfer; and what the installed huggingface_hub's own
`hf_hub_download` does in the same cases (the reasons unclip keeps its own client, weights/hub.py).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from huggingface_hub import hf_hub_download

from hubserver import fake_hub  # noqa: F401  (fixture)
from test_models_cmd import COMMIT, MODEL, REPO, STAGE_FILES, HubModel, cli, header, hub_model  # noqa: F401
from unclip_cli.weights import hub as hub_client

SRC = Path(__file__).resolve().parent.parent / "src"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_blob(name: str) -> Path:
    path = Path(hf_hub_download(REPO, name, revision=COMMIT, local_files_only=True))
    return Path(os.path.realpath(path))


def errors(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("error: ")]


# --------------------------------------------------------------------------- unclip's client


def test_pull_killed_midway_resumes_where_it_stopped(hub_model: HubModel, tmp_path: Path) -> None:
    """SIGKILL during a transfer (no cleanup at all runs); the next pull asks only for the missing bytes."""
    hub, name = hub_model.hub, STAGE_FILES["clip"]
    data = hub_model.data[name]
    hub.stall_after(REPO, name, 2_000_000, revision=COMMIT)
    partial = hub_client.partial_path(hub_model.source(name))
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "unclip_cli", "models", "pull", MODEL], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size >= 1_000_000):
            assert proc.poll() is None and time.monotonic() < deadline, "the pull never reached the stalled file"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        hub.release()
    kept = partial.stat().st_size
    assert 1_000_000 <= kept <= 2_000_000

    hub.reset_requests()
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 0, r.output
    [get] = hub.file_requests(REPO, name, method="GET")
    assert header(get, "Range") == f"bytes={kept}-" and get.status == 206
    assert sha(cached_blob(name).read_bytes()) == sha(data)
    assert not partial.exists() and not list(hub.cache_dir.rglob("*.incomplete"))


def test_corrupt_cached_file_is_detected_and_fetched_again(hub_model: HubModel, tmp_path: Path) -> None:
    hub, name = hub_model.hub, STAGE_FILES["prior"]
    assert cli("models", "pull", MODEL).exit_code == 0
    blob = cached_blob(name)
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # same size, one bit flipped: only the sha256 can tell
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))

    hub.reset_requests()
    out = tmp_path / "out"
    r = cli("generate", "a red circle", "--model", MODEL, "--size", "64", "--seed", "1", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "corrupt or truncated" in r.stderr and "sha256" in r.stderr and "fetching it again" in r.stderr
    [get] = hub.file_requests(REPO, name, method="GET")
    assert header(get, "Range") is None  # the whole file again
    assert cached_blob(name).read_bytes() == hub_model.data[name]
    assert len(list(out.glob("*.png"))) == 1


def test_truncated_cached_file_is_continued(hub_model: HubModel) -> None:
    hub, name = hub_model.hub, STAGE_FILES["clip"]
    assert cli("models", "pull", MODEL).exit_code == 0
    blob = cached_blob(name)
    half = blob.stat().st_size // 2
    blob.chmod(0o644)
    blob.write_bytes(hub_model.data[name][:half])

    hub.reset_requests()
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 0, r.output
    assert f"has {half} bytes" in r.stderr and "fetching it again" in r.stderr
    assert "stage 'clip': downloaded" in r.stderr and "stage 'prior': already downloaded" in r.stderr
    [get] = hub.file_requests(REPO, name, method="GET")
    assert header(get, "Range") == f"bytes={half}-"
    assert cached_blob(name).read_bytes() == hub_model.data[name]


def test_truncated_and_corrupt_cached_file_is_fetched_whole(hub_model: HubModel) -> None:
    """Continuing from a prefix that is itself damaged fails the sha256 check: once more from byte 0."""
    hub, name = hub_model.hub, STAGE_FILES["clip"]
    assert cli("models", "pull", MODEL).exit_code == 0
    blob = cached_blob(name)
    head = bytearray(hub_model.data[name][: blob.stat().st_size // 2])
    head[100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(head))

    hub.reset_requests()
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 0, r.output
    assert "did not check out; downloading it whole" in r.stderr
    gets = hub.file_requests(REPO, name, method="GET")
    assert [header(g, "Range") for g in gets] == [f"bytes={len(head)}-", None]
    assert cached_blob(name).read_bytes() == hub_model.data[name]


def test_corrupt_cached_file_offline_is_named(hub_model: HubModel, tmp_path: Path, monkeypatch) -> None:
    name = STAGE_FILES["decoder"]
    assert cli("models", "pull", MODEL).exit_code == 0
    blob = cached_blob(name)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-10])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    r = cli("generate", "a red circle", "--model", MODEL, "--size", "64", "-o", str(out))
    [line] = errors(r)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert str(blob) in line and "corrupt or truncated" in line and f"unclip models pull {MODEL}" in line
    assert blob.stat().st_size == len(hub_model.data[name]) - 10  # named, left as it was
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_corrupted_transfer_is_discarded_then_fetched(hub_model: HubModel) -> None:
    hub, name = hub_model.hub, STAGE_FILES["decoder"]
    hub.corrupt_next(REPO, name, revision=COMMIT)
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 1 and "discarded" in errors(r)[0]
    src = hub_model.source(name)
    assert hub_client.cached_path(src) is None and not hub_client.partial_path(src).exists()
    assert cli("models", "pull", MODEL).exit_code == 0
    assert cached_blob(name).read_bytes() == hub_model.data[name]


# --------------------------------------------------------------------------- huggingface_hub's hf_hub_download


def test_hf_hub_download_accepts_a_corrupted_transfer(hub_model: HubModel) -> None:
    """It checks the length only, not the sha256 the Hub announced as the ETag: the damaged file is cached."""
    hub, name = hub_model.hub, STAGE_FILES["decoder"]
    hub.corrupt_next(REPO, name, revision=COMMIT)
    path = Path(hf_hub_download(REPO, name, revision=COMMIT))
    got = path.read_bytes()
    assert len(got) == len(hub_model.data[name]) and got != hub_model.data[name]
    assert Path(os.path.realpath(path)).name == sha(hub_model.data[name])  # named by a sha256 it does not have


def test_hf_hub_download_returns_a_corrupt_cached_file(hub_model: HubModel) -> None:
    name = STAGE_FILES["decoder"]
    path = Path(hf_hub_download(REPO, name, revision=COMMIT))
    blob = Path(os.path.realpath(path))
    blob.chmod(0o644)
    blob.write_bytes(b"x" * 10)
    hub_model.hub.reset_requests()
    assert Path(hf_hub_download(REPO, name, revision=COMMIT)).read_bytes() == b"x" * 10
    assert hub_model.hub.requests == []  # not even looked at


def test_hf_hub_download_killed_midway_leaves_an_orphan_and_starts_over(hub_model: HubModel) -> None:
    """Its partial file is `<etag>.<random>.incomplete`, unique per call: after a kill it stays behind, unused."""
    hub, name = hub_model.hub, STAGE_FILES["clip"]
    hub.stall_after(REPO, name, 2_000_000, revision=COMMIT)
    code = f"from huggingface_hub import hf_hub_download; hf_hub_download({REPO!r}, {name!r}, revision={COMMIT!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blobs = hub.cache_dir / f"models--{REPO.replace('/', '--')}" / "blobs"
    try:
        deadline = time.monotonic() + 120
        while not (list(blobs.glob("*.incomplete")) and hub.file_requests(REPO, name, method="GET")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # 2 MB sent; it writes in 10 MiB pieces, so they are still in its memory
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        hub.release()
    [orphan] = list(blobs.glob("*.incomplete"))
    assert orphan.stat().st_size < 2_000_000
    hub.reset_requests()
    hf_hub_download(REPO, name, revision=COMMIT)
    [get] = hub.file_requests(REPO, name, method="GET")
    assert header(get, "Range") is None  # from byte 0
    assert orphan.exists()  # and the killed call's bytes are left on disk
