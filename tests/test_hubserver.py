"""The fake Hub (tests/hubserver.py) driven by the real ``huggingface_hub.hf_hub_download`` (2.4.x, httpx2).

These tests pin down the huggingface_hub behaviour the product relies on: cache layout, "no request when a pinned
commit is cached", ``local_files_only``, the exception classes for missing / offline / unreachable, and resume.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hubserver import FakeHub, disable_retry_sleeps, fake_hub, unused_endpoint  # noqa: F401  (fixture import)

REPO = "unclip-test/weights"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
CONFIG = b'{"dim": 64}\n'
WEIGHTS = os.urandom(1 << 20)  # 1 MiB, LFS by suffix -> HEAD 302 + GET on the "CDN" origin


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:
    fake_hub.add_file(REPO, COMMIT, "config.json", CONFIG)
    fake_hub.add_file(REPO, COMMIT, "prior.safetensors", WEIGHTS)
    return fake_hub


def test_fixture_points_huggingface_hub_at_fake_server(hub: FakeHub) -> None:
    assert os.environ["HF_ENDPOINT"] == hub.endpoint == constants.ENDPOINT
    assert hub.endpoint.startswith("http://127.0.0.1:")
    assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(hub.endpoint + "/")
    assert constants.HF_HUB_CACHE == os.environ["HF_HUB_CACHE"] == str(hub.cache_dir)
    assert constants.HF_HUB_OFFLINE is False
    assert hf_hub_url(REPO, "config.json").startswith(hub.endpoint)


# (1) pinned download lands in the cache with the right bytes ---------------------------------------------------
@pytest.mark.parametrize("filename,data,lfs", [("config.json", CONFIG, False), ("prior.safetensors", WEIGHTS, True)])
def test_download_pinned_revision_into_cache(hub: FakeHub, filename: str, data: bytes, lfs: bool) -> None:
    path = Path(hf_hub_download(REPO, filename, revision=COMMIT))

    storage = hub.cache_dir / "models--unclip-test--weights"
    assert path == storage / "snapshots" / COMMIT / filename
    assert path.read_bytes() == data
    f = hub.get_file(REPO, filename, COMMIT)
    assert f.lfs is lfs
    blob = storage / "blobs" / f.etag  # sha256 for LFS files, git blob sha1 otherwise
    assert blob.read_bytes() == data
    assert path.resolve() == blob.resolve()  # snapshot entry is a symlink to the blob
    assert not list((storage / "blobs").glob("*.incomplete"))

    heads = hub.file_requests(REPO, filename, method="HEAD")
    assert [r.status for r in heads] == ([302] if lfs else [200])
    assert hub.file_gets(REPO, filename) == 1
    if lfs:  # the bytes came from the CDN origin, not /resolve
        assert hub.count("GET", kind="cdn") == 1 and hub.count("GET", kind="resolve") == 0
    # No token is ever sent to the fake hub, and no telemetry / agent-registry call is made.
    assert all("authorization" not in {k.lower() for k in r.headers} for r in hub.requests)
    assert hub.count(path="/api/agent-harnesses") == 0


def test_branch_revision_resolves_to_commit_and_writes_ref(hub: FakeHub) -> None:
    hub.add_file(REPO, OTHER_COMMIT, "config.json", b"{}", ref="main")  # main moves to OTHER_COMMIT
    path = Path(hf_hub_download(REPO, "config.json"))  # revision=None -> "main"
    assert path.parent.name == OTHER_COMMIT and path.read_bytes() == b"{}"
    refs_main = hub.cache_dir / "models--unclip-test--weights" / "refs" / "main"
    assert refs_main.read_text() == OTHER_COMMIT
    assert HfApi().model_info(REPO).sha == OTHER_COMMIT
    assert HfApi().model_info(REPO, revision=COMMIT).sha == COMMIT


# (2) second call with the same pinned revision: no network at all ----------------------------------------------
def test_cached_pinned_revision_makes_no_request(hub: FakeHub) -> None:
    first = hf_hub_download(REPO, "prior.safetensors", revision=COMMIT)
    assert hub.file_gets(REPO, "prior.safetensors") == 1
    hub.reset_requests()

    second = hf_hub_download(REPO, "prior.safetensors", revision=COMMIT)
    assert second == first
    assert hub.requests == []  # not even a HEAD: a 40-hex revision found in snapshots/ short-circuits


def test_cached_branch_revision_still_heads_but_does_not_get(hub: FakeHub) -> None:
    hf_hub_download(REPO, "config.json", revision="main")
    hub.reset_requests()
    hf_hub_download(REPO, "config.json", revision="main")
    assert hub.count("HEAD") == 1  # a branch must be re-resolved ...
    assert hub.file_gets(REPO, "config.json") == 0  # ... but the bytes are not fetched again


# (3) local_files_only ------------------------------------------------------------------------------------------
def test_local_files_only(hub: FakeHub) -> None:
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json", revision=COMMIT, local_files_only=True)
    assert hub.requests == []

    online = hf_hub_download(REPO, "config.json", revision=COMMIT)
    hub.reset_requests()
    assert hf_hub_download(REPO, "config.json", revision=COMMIT, local_files_only=True) == online
    # A download by commit does not write refs/main, so "main" is unknown offline ...
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json", revision="main", local_files_only=True)
    assert hub.requests == []
    # ... until something was downloaded *by branch name*, which records refs/main -> commit.
    hf_hub_download(REPO, "config.json", revision="main")
    hub.reset_requests()
    assert hf_hub_download(REPO, "config.json", revision="main", local_files_only=True) == online
    assert hub.requests == []


def test_offline_env_not_cached_raises_local_entry_not_found(hub: FakeHub, monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 at import would give
    with pytest.raises(LocalEntryNotFoundError) as info:
        hf_hub_download(REPO, "config.json", revision=COMMIT)
    assert isinstance(info.value.__cause__, OfflineModeIsEnabled)
    assert hub.requests == []


# (4) missing things ---------------------------------------------------------------------------------------------
def test_missing_file_raises_remote_entry_not_found(hub: FakeHub) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as info:
        hf_hub_download(REPO, "missing.bin", revision=COMMIT)
    err = info.value
    assert isinstance(err, EntryNotFoundError) and isinstance(err, HfHubHTTPError)
    assert not isinstance(err, LocalEntryNotFoundError)
    assert err.response.status_code == 404
    assert hub.count("GET") == 0
    # The client remembers the miss (thanks to X-Repo-Commit on the 404).
    assert (hub.cache_dir / "models--unclip-test--weights" / ".no_exist" / COMMIT / "missing.bin").exists()


@pytest.mark.parametrize(
    "repo_id,revision,exc",
    [
        ("unclip-test/nope", COMMIT, RepositoryNotFoundError),
        (REPO, "no-such-branch", RevisionNotFoundError),
        (REPO, OTHER_COMMIT, RevisionNotFoundError),
    ],
)
def test_missing_repo_or_revision(hub: FakeHub, repo_id: str, revision: str, exc: type) -> None:
    with pytest.raises(exc):
        hf_hub_download(repo_id, "config.json", revision=revision)


def test_transient_server_error_is_retried(hub: FakeHub, monkeypatch) -> None:
    sleeps = disable_retry_sleeps(monkeypatch)
    hub.fail_next(status=500, times=1)  # first HEAD fails (no retry), then hf_hub_download retries the HEAD
    path = hf_hub_download(REPO, "config.json", revision=COMMIT)
    assert Path(path).read_bytes() == CONFIG
    assert [r.status for r in hub.file_requests(REPO, "config.json", method="HEAD")] == [500, 200]
    assert sleeps == []


# (5) interrupted downloads --------------------------------------------------------------------------------------
def test_interrupted_download_resumes_with_range_in_same_call(hub: FakeHub, monkeypatch) -> None:
    sleeps = disable_retry_sleeps(monkeypatch)
    # http_get writes in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces; a partial chunk is lost on a drop. Use small chunks
    # so the bytes received before the drop are on disk and the retry asks for the rest with a Range header.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    cut = 300_000
    hub.fail_after(REPO, "prior.safetensors", cut, revision=COMMIT)

    path = hf_hub_download(REPO, "prior.safetensors", revision=COMMIT)

    assert Path(path).read_bytes() == WEIGHTS
    gets = hub.file_requests(REPO, "prior.safetensors", method="GET")
    assert len(gets) == 2
    assert "Range" not in gets[0].headers and gets[0].status == 200
    resumed_from = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= cut and resumed_from % (64 * 1024) == 0
    assert gets[1].status == 206
    assert sleeps == [1]  # http_get sleeps 1 s before resuming


def test_interrupted_download_is_not_resumed_across_calls(hub: FakeHub, monkeypatch) -> None:
    """huggingface_hub 2.4 downloads to a per-process ``<etag>.<uuid8>.incomplete`` file and deletes it on failure.

    So a later call starts over from byte 0. Within one call, http_get retries up to 5 times (the counter is reset
    whenever a full chunk arrived); when that gives up, the raw httpx2 transport error escapes hf_hub_download.
    """
    sleeps = disable_retry_sleeps(monkeypatch)
    # Drops before the first 10 MiB chunk completes never make progress: 1 try + 5 retries, then give up.
    hub.fail_after(REPO, "prior.safetensors", 1000, revision=COMMIT, times=6)
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, "prior.safetensors", revision=COMMIT)
    assert sleeps == [1] * 5  # 5 retries, then the error escapes
    blobs = hub.cache_dir / "models--unclip-test--weights" / "blobs"
    assert not list(blobs.glob("*.incomplete"))  # partial file removed, nothing to resume from
    assert not (hub.cache_dir / "models--unclip-test--weights" / "snapshots" / COMMIT / "prior.safetensors").exists()

    hub.reset_requests()
    path = hf_hub_download(REPO, "prior.safetensors", revision=COMMIT)
    assert Path(path).read_bytes() == WEIGHTS
    gets = hub.file_requests(REPO, "prior.safetensors", method="GET")
    assert len(gets) == 1 and "Range" not in gets[0].headers and gets[0].status == 200


def test_range_requests_served_like_the_hub(hub: FakeHub) -> None:
    url = f"{hub.endpoint}/{REPO}/resolve/{COMMIT}/config.json"
    with httpx2.Client() as client:
        r = client.get(url, headers={"Range": "bytes=2-5"})
        assert r.status_code == 206 and r.content == CONFIG[2:6]
        assert r.headers["Content-Range"] == f"bytes 2-5/{len(CONFIG)}"
        assert r.headers["X-Repo-Commit"] == COMMIT
        assert client.get(url, headers={"Range": "bytes=-3"}).content == CONFIG[-3:]
        assert client.get(url, headers={"Range": f"bytes={len(CONFIG)}-"}).status_code == 416


# (6) hub unreachable ---------------------------------------------------------------------------------------------
def test_unreachable_hub_not_cached(hub: FakeHub, monkeypatch) -> None:
    """Connection refused. hf_hub_download -> LocalEntryNotFoundError whose __cause__ is httpx2.ConnectError.

    NOTE: not "quick" by itself: after the first (no-retry) HEAD fails, hf_hub_download retries the HEAD with
    back-off (sleeps 1+2+4+8+8 = 23 s) whatever HF_HUB_ETAG_TIMEOUT says, and each retry uses a 60 s timeout.
    The sleeps are disabled here; they are recorded to pin that behaviour down.
    """
    sleeps = disable_retry_sleeps(monkeypatch)
    hub.stop()
    t0 = time.monotonic()
    with pytest.raises(LocalEntryNotFoundError) as info:
        hf_hub_download(REPO, "config.json", revision=COMMIT)
    assert time.monotonic() - t0 < 3
    assert isinstance(info.value.__cause__, httpx2.ConnectError)
    assert sleeps == [1, 2, 4, 8, 8]


def test_unreachable_hub_metadata_probe_fails_fast() -> None:
    """get_hf_file_metadata does not retry by default: a cheap, quick "is the hub reachable?" probe."""
    url = hf_hub_url(REPO, "config.json", revision=COMMIT, endpoint=unused_endpoint())
    t0 = time.monotonic()
    with pytest.raises(httpx2.ConnectError):
        get_hf_file_metadata(url, timeout=1)
    assert time.monotonic() - t0 < 1


def test_blackholed_hub_metadata_probe_times_out() -> None:
    """A host that accepts but never answers -> httpx2.ReadTimeout (a httpx2.TimeoutException) after `timeout`."""
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        url = hf_hub_url(REPO, "config.json", revision=COMMIT, endpoint=f"http://127.0.0.1:{sink.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(httpx2.TimeoutException):
            get_hf_file_metadata(url, timeout=0.5)
        assert time.monotonic() - t0 < 3


def test_unreachable_hub_serves_cached_files(hub: FakeHub, monkeypatch) -> None:
    sleeps = disable_retry_sleeps(monkeypatch)
    pinned = hf_hub_download(REPO, "config.json", revision=COMMIT)
    by_branch = hf_hub_download(REPO, "prior.safetensors", revision="main")
    hub.stop()
    assert hf_hub_download(REPO, "config.json", revision=COMMIT) == pinned  # no request at all
    assert hf_hub_download(REPO, "prior.safetensors", revision="main") == by_branch  # HEAD fails -> refs/main
    assert sleeps == []  # the cache fallback happens before any back-off


def test_hub_restart_keeps_endpoint(hub: FakeHub) -> None:
    endpoint = hub.endpoint
    hub.stop()
    hub.start()
    assert hub.endpoint == endpoint
    assert Path(hf_hub_download(REPO, "config.json", revision=COMMIT)).read_bytes() == CONFIG


def test_non_loopback_hosts_are_blocked(fake_hub: FakeHub) -> None:
    url = hf_hub_url(REPO, "config.json", revision=COMMIT, endpoint="https://huggingface.co")
    with pytest.raises(httpx2.ConnectError):
        get_hf_file_metadata(url, timeout=1)


def test_env_vars_alone_configure_a_subprocess(hub: FakeHub) -> None:
    """A child process (e.g. the `unclip` CLI) picks the fake hub up from the env vars the fixture set."""
    code = (
        "import sys; from huggingface_hub import hf_hub_download; "
        f"p = hf_hub_download({REPO!r}, 'config.json', revision={COMMIT!r}); "
        "sys.stdout.write(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert Path(out.stdout).read_bytes() == CONFIG
    assert Path(out.stdout).is_relative_to(hub.cache_dir)
    assert hub.file_gets(REPO, "config.json") == 1
