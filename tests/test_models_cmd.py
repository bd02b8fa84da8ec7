"""`unclip models list` / `models pull`, and fetching model files from the Hub, against the fake Hub.

A tiny random model (tests/tiny.py) is published on the fake Hub (tests/hubserver.py) under a pinned commit, in a
diffusers-like folder layout, and registered as `hubtiny` (format "unclip") in $UNCLIP_HOME/weights.toml. Nothing
here leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download
from typer.testing import CliRunner

from hubserver import FakeHub, fake_hub  # noqa: F401  (fixture import)
from unclip_cli.weights import hub as hub_client, registry as weights
from unclip_cli.cli.app import app

REPO = "unclip-test/tiny-hub"
COMMIT = "1234567890abcdef1234567890abcdef12345678"
MODEL = "hubtiny"
STAGE_FILES = {
    "clip": "text_encoder/model.safetensors",
    "prior": "prior/diffusion_pytorch_model.safetensors",
    "text_proj": "text_proj/diffusion_pytorch_model.safetensors",
    "decoder": "decoder/diffusion_pytorch_model.safetensors",
    "sr256": "super_res_first/diffusion_pytorch_model.safetensors",
}
CONFIG_FILES = {"clip": "text_encoder/config.json", "decoder": "decoder/config.json"}
ALL_FILES = [*STAGE_FILES.values(), *CONFIG_FILES.values()]


class HubModel:
    def __init__(self, hub: FakeHub, home: Path, data: dict[str, bytes]):
        self.hub, self.home, self.data = hub, home, data

    def write_toml(self, sha: dict[str, str | None] | None = None) -> None:
        """$UNCLIP_HOME/weights.toml registering `hubtiny`; `sha` overrides (None: leave out) per filename."""
        sha = sha or {}
        lines = [f"[models.{MODEL}]", 'description = "tiny model on the fake hub"', 'format = "unclip"', "",
                 f"[models.{MODEL}.defaults]", "prior_steps = 2", "decoder_steps = 2", "sr_steps = 2"]
        for table, files in (("stages", STAGE_FILES), ("configs", CONFIG_FILES)):
            lines += ["", f"[models.{MODEL}.{table}]"]
            for stage, name in files.items():
                digest = sha.get(name, self.hub.get_file(REPO, name, COMMIT).sha256)
                pin = f', sha256 = "{digest}"' if digest else ""
                lines.append(f'{stage} = {{ repo = "{REPO}", revision = "{COMMIT}", filename = "{name}", '
                             f'size = {len(self.data[name])}{pin} }}')
        (self.home / "weights.toml").write_text("\n".join(lines) + "\n")

    def source(self, filename: str) -> weights.Source:
        spec = weights.registry()[1][MODEL]
        return next(s for s in [*spec.stages.values(), *spec.configs.values()] if s.filename == filename)


@pytest.fixture
def hub_model(fake_hub: FakeHub, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> HubModel:  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("UNCLIP_HOME", str(home))
    monkeypatch.setenv("UNCLIP_QUIET", "1")
    monkeypatch.setattr(hub_client, "RETRY_WAIT_S", 0.01)
    data = {}
    for stage, name in STAGE_FILES.items():
        data[name] = (tiny_model_dir / f"{stage}.safetensors").read_bytes()
    for stage, name in CONFIG_FILES.items():
        data[name] = json.dumps({"stage": stage, "tiny": True}).encode() + b"\n"
    for name, blob in data.items():
        fake_hub.add_file(REPO, COMMIT, name, blob)  # .safetensors: LFS (302 to the "CDN"); .json: plain git file
    model = HubModel(fake_hub, home, data)
    model.write_toml()
    return model


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def listed(name: str = MODEL) -> dict:
    r = cli("models", "list", "--json")
    assert r.exit_code == 0, r.output
    return next(m for m in json.loads(r.stdout) if m["name"] == name)


def header(req, name: str) -> str | None:
    return next((v for k, v in req.headers.items() if k.lower() == name.lower()), None)


# The packaged registry ------------------------------------------------------------------------------------------
def test_karlo_registry_entries_parse_and_are_pinned(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("UNCLIP_HOME", str(tmp_path))  # no user registry
    _, models = weights.registry()
    karlo, variations = models["karlo"], models["karlo-variations"]
    assert set(karlo.stages) == {"clip", "prior", "text_proj", "decoder", "sr256", "sr256_last"}
    assert set(variations.stages) == {"clip", "clip_vision", "text_proj", "decoder", "sr256", "sr256_last"}
    fast = dict(sampler="dpmpp_2m_sde", spacing="logsnr", decoder_steps=16, sr_steps=4)  # README "Speed"
    assert karlo.defaults == dict(fast, prior_steps=16, prior_guidance=4.0, decoder_guidance=8.0)
    assert variations.defaults == dict(fast, decoder_guidance=8.0)
    for spec in (karlo, variations):
        assert spec.format == "diffusers"
        assert set(spec.configs) == set(spec.stages)  # a config.json for every stage
        for stage, src in [*spec.stages.items(), *spec.configs.items()]:
            assert src.path is None and src.repo and re.fullmatch(r"[0-9a-f]{40}", src.revision)
            assert src.filename.endswith((".safetensors", "config.json")), src.filename  # never a pickle
            assert src.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", src.sha256)
        assert all(src.revision == karlo.stages["prior"].revision
                   for s, src in spec.configs.items() if src.repo == "kakaobrain/karlo-v1-alpha")
    assert karlo.stages["clip"].filename == "text_encoder/model.safetensors"
    assert karlo.stages["sr256"].filename == "super_res_first/diffusion_pytorch_model.safetensors"
    assert karlo.stages["sr256_last"].filename == "super_res_last/diffusion_pytorch_model.safetensors"
    # every weights file is pinned by sha256 except super_res_first, whose value could not be confirmed
    assert [s for s, src in karlo.stages.items() if not src.sha256] == ["sr256"]
    assert weights.resolve("karlo").name == "karlo"


# pull + list ----------------------------------------------------------------------------------------------------
def test_pull_downloads_every_file_once_and_list_shows_it(hub_model: HubModel) -> None:
    hub = hub_model.hub
    before = listed()
    assert not before["complete"]
    assert [f["cached"] for f in before["stages"] + before["configs"]] == [False] * len(ALL_FILES)
    assert {f["filename"]: f["size"] for f in before["stages"] + before["configs"]} == {
        n: len(b) for n, b in hub_model.data.items()}

    r = cli("models", "pull", MODEL)
    assert r.exit_code == 0, r.output
    assert f"model '{MODEL}' is ready" in r.stderr
    for name, blob in hub_model.data.items():
        assert hub.file_gets(REPO, name) == 1, name
        # laid out exactly as huggingface_hub does it: found offline by huggingface_hub itself
        path = Path(hf_hub_download(REPO, name, revision=COMMIT, local_files_only=True))
        assert path.read_bytes() == blob
        assert path.is_symlink() and path.resolve().parent.name == "blobs"
        assert path.resolve().name == hub.get_file(REPO, name, COMMIT).etag
    assert not list(hub.cache_dir.rglob("*.incomplete"))

    after = listed()
    assert after["complete"] and all(f["cached"] for f in after["stages"] + after["configs"])
    table = cli("models", "list")
    assert table.exit_code == 0 and MODEL in table.stdout and "pinned" in table.stdout

    hub.reset_requests()
    again = cli("models", "pull", MODEL)
    assert again.exit_code == 0, again.output
    assert "already downloaded" in again.stderr
    assert hub.requests == []  # pinned commits in the cache: not even a HEAD


def test_interrupted_pull_resumes_with_range(hub_model: HubModel, monkeypatch) -> None:
    hub = hub_model.hub
    name = STAGE_FILES["clip"]  # the largest tiny file (~6 MB)
    total = len(hub_model.data[name])
    monkeypatch.setattr(hub_client, "DOWNLOAD_RETRIES", 0)  # no retry within the call: the pull stops
    hub.fail_after(REPO, name, 2_000_000, revision=COMMIT)

    r = cli("models", "pull", MODEL)
    assert r.exit_code == 1
    assert "interrupted" in r.stderr and f"unclip models pull {MODEL}" in r.stderr
    partial = hub_client.partial_path(hub_model.source(name))
    kept = partial.stat().st_size
    assert 0 < kept <= 2_000_000
    clip_row = next(f for f in listed()["stages"] if f["stage"] == "clip")
    assert clip_row["partial_bytes"] == kept and not clip_row["cached"]

    hub.reset_requests()
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 0, r.output
    gets = hub.file_requests(REPO, name, method="GET")
    assert len(gets) == 1
    assert header(gets[0], "Range") == f"bytes={kept}-" and gets[0].status == 206  # only the remainder
    assert Path(hf_hub_download(REPO, name, revision=COMMIT, local_files_only=True)).read_bytes() == hub_model.data[name]
    assert not partial.exists() and kept < total


def test_sha256_mismatch_after_download_is_refused(hub_model: HubModel) -> None:
    hub, name = hub_model.hub, CONFIG_FILES["decoder"]  # a plain git file: only checkable after the download
    hub_model.write_toml(sha={name: "0" * 64})
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 1
    assert "sha256" in r.stderr and "0" * 64 in r.stderr and "discarded" in r.stderr
    assert hub.file_gets(REPO, name) == 1
    src = hub_model.source(name)
    assert hub_client.cached_path(src) is None and not hub_client.partial_path(src).exists()


def test_lfs_sha256_mismatch_is_refused_before_downloading(hub_model: HubModel) -> None:
    hub, name = hub_model.hub, STAGE_FILES["prior"]
    hub_model.write_toml(sha={name: "f" * 64})
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 1 and "refusing to download" in r.stderr
    assert hub.file_gets(REPO, name) == 0  # the Hub's LFS etag already told us


def test_unpinned_file_works_and_is_reported_once(hub_model: HubModel) -> None:
    name = STAGE_FILES["decoder"]
    hub_model.write_toml(sha={name: None})
    r = cli("models", "pull", MODEL)
    assert r.exit_code == 0, r.output
    actual = hub_model.hub.get_file(REPO, name, COMMIT).sha256
    assert "is not verified" in r.stderr and actual in r.stderr
    again = cli("models", "pull", MODEL)
    assert again.exit_code == 0 and "is not verified" not in again.stderr
    assert "sha256 not pinned" in again.stderr


@pytest.mark.parametrize("old,new,expect", [
    (f'repo = "{REPO}"', 'repo = "unclip-test/no-such-repo"', "repository unclip-test/no-such-repo is not on"),
    (f'revision = "{COMMIT}"', f'revision = "{"ab" * 20}"', f"commit {'ab' * 20} is not in {REPO}"),
    (f'filename = "{STAGE_FILES["prior"]}"', 'filename = "prior/missing.safetensors"',
     "prior/missing.safetensors is not in"),
])
def test_wrong_registry_entry_names_the_fix(hub_model: HubModel, old: str, new: str, expect: str) -> None:
    toml = hub_model.home / "weights.toml"
    toml.write_text(toml.read_text().replace(old, new))
    r = cli("models", "pull", MODEL)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.stderr
    assert expect in errors[0] and "weights.toml" in errors[0], errors[0]


def test_hub_server_error_says_try_later(hub_model: HubModel) -> None:
    hub_model.hub.fail_next(503, times=50)
    r = cli("models", "pull", MODEL)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.exit_code == 1 and len(errors) == 1 and "Traceback" not in r.output, r.stderr
    assert "answered HTTP 503 (try again later)" in errors[0], errors[0]


# no Hub ---------------------------------------------------------------------------------------------------------
def _one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    code = r.returncode if isinstance(r, subprocess.CompletedProcess) else r.exit_code
    assert code == 1 and len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("error: ") and f"unclip models pull {MODEL}" in line
    assert "HF_HUB_CACHE" in line and "--model shapes" in line
    return line


def test_unreachable_hub_fails_fast_with_one_line(hub_model: HubModel, tmp_path: Path) -> None:
    hub_model.hub.stop()
    t0 = time.monotonic()
    r = cli("generate", "a red circle", "--model", MODEL, "--size", "64", "-o", str(tmp_path / "out"))
    assert time.monotonic() - t0 < 3
    assert "cannot be reached" in _one_line_error(r)
    assert not list(tmp_path.rglob("*.png"))


def test_offline_mode_fails_fast_without_requests(hub_model: HubModel, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    r = cli("generate", "a red circle", "--model", MODEL, "--size", "64", "-o", str(tmp_path / "out"))
    assert time.monotonic() - t0 < 3
    assert "HF_HUB_OFFLINE is set" in _one_line_error(r)
    assert hub_model.hub.requests == []


def test_offline_mode_in_a_fresh_process(hub_model: HubModel, tmp_path: Path) -> None:
    """The real command line: huggingface_hub reads HF_HUB_OFFLINE at import in a new process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "unclip_cli", "generate", "a red circle", "--model", MODEL,
                        "--size", "64", "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       timeout=300)  # generous: the CPU may be shared
    assert r.returncode == 1
    assert "HF_HUB_OFFLINE is set" in _one_line_error(r)
    assert hub_model.hub.requests == []


def test_cached_model_generates_with_no_request(hub_model: HubModel, tmp_path: Path) -> None:
    hub = hub_model.hub
    assert cli("models", "pull", MODEL).exit_code == 0
    hub.reset_requests()
    args = ["generate", "a red circle", "--model", MODEL, "--size", "64", "--seed", "3", "-o", str(tmp_path / "out")]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert hub.requests == []
    hub.stop()
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
