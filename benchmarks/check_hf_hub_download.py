"""Measure huggingface_hub's `hf_hub_download` against unclip's own client (weights/hub.py) when downloads go wrong.

Both run in fresh processes (huggingface_hub reads its environment at import) against the local stand-in Hub
(tests/hubserver.py, 127.0.0.1 only), each scenario with an empty cache:

  offline       HF_HUB_OFFLINE=1, file not cached
  refused       nothing listens at HF_ENDPOINT (connection refused), default timeouts / HF_HUB_ETAG_TIMEOUT=1 and
                HF_HUB_DOWNLOAD_TIMEOUT=1
  blackhole     HF_ENDPOINT accepts connections and never answers, timeouts 1 s
  flaky         every GET of the file is cut after 3 MB (a connection that keeps dropping)
  killed        the process is SIGKILLed 2 MB into the transfer, then run again
  bad-transfer  one byte of the transfer flipped (same length)
  bad-cache     one byte of the cached file flipped, then asked for again

    python benchmarks/check_hf_hub_download.py --out benchmarks/results/hf_hub_download.json   # ~3 minutes
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

REPO, COMMIT, FILE = "bench/weights", "c" * 40, "prior/diffusion_pytorch_model.safetensors"
SIZE = 20_000_000  # two of huggingface_hub's 10 MiB write chunks
DATA = hashlib.sha256(b"seed").digest() * (SIZE // 32)
SHA = hashlib.sha256(DATA).hexdigest()


def child(kind: str) -> None:
    """Fetch FILE once with `kind` ("hf" or "unclip"); print one JSON line."""
    t0 = time.monotonic()
    result = {"ok": False}
    try:
        if kind == "hf":
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(REPO, FILE, revision=COMMIT)
        else:
            from unclip_cli.weights import hub
            from unclip_cli.weights.spec import Source

            path = hub.fetch(Source(repo=REPO, revision=COMMIT, filename=FILE, sha256=SHA, size=SIZE), "prior")
        result = {"ok": True, "sha256_ok": hashlib.sha256(Path(path).read_bytes()).hexdigest() == SHA}
    except BaseException as e:  # noqa: BLE001 - measuring what escapes
        result["error"] = f"{type(e).__module__}.{type(e).__name__}: {str(e)[:160]}"
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))


def env_for(endpoint: str, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "UNCLIP_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_TOKEN_PATH=str(home / "token"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", UNCLIP_HOME=str(home / "unclip"),
               UNCLIP_QUIET="1", PYTHONPATH=str(ROOT / "src"), **extra)
    return env


def run(kind: str, env: dict, timeout: float = 200) -> dict:
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, __file__, "--child", kind], env=env, capture_output=True, text=True,
                           timeout=timeout)
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        out = {"ok": False, "error": f"still running after {timeout} s (killed)"}
    out["wall_seconds"] = round(time.monotonic() - t0, 2)
    return out


def leftovers(home: Path) -> dict:
    blobs = list((home / "hub").rglob("blobs/*"))
    return {"partial_files": [p.name for p in blobs if p.name.endswith(".incomplete")],
            "partial_bytes": sum(p.stat().st_size for p in blobs if p.name.endswith(".incomplete"))}


def gets(hub) -> list:
    return [{"range": r.headers.get("Range"), "status": r.status}
            for r in hub.file_requests(REPO, FILE, method="GET")]


def scenario_unreachable(kind: str, endpoint: str, **env) -> dict:
    with tempfile.TemporaryDirectory() as d:
        return run(kind, env_for(endpoint, Path(d), **env))


def scenario_faulty(kind: str, hub, fault, again: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        env = env_for(hub.endpoint, home)
        if fault == "bad-cache":
            run(kind, env)
            blob = next((home / "hub").rglob(f"blobs/{SHA}"))
            data = bytearray(blob.read_bytes())
            data[SIZE // 2] ^= 1
            blob.chmod(0o644)
            blob.write_bytes(bytes(data))
        hub.reset_requests()
        if fault == "flaky":
            hub.fail_after(REPO, FILE, 3_000_000, revision=COMMIT, times=1000)
        elif fault == "bad-transfer":
            hub.corrupt_next(REPO, FILE, revision=COMMIT)
        first = run_killed(kind, env, hub) if fault == "killed" else run(kind, env)
        first.update(leftovers(home), gets=gets(hub))
        hub._fail_after.clear()
        if not again:
            return first
        hub.reset_requests()
        second = run(kind, env)
        second.update(leftovers(home), gets=gets(hub))
        return {"first": first, "second": second}


def run_killed(kind: str, env: dict, hub) -> dict:
    hub.stall_after(REPO, FILE, 2_000_000, revision=COMMIT)
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not hub.file_requests(REPO, FILE, method="GET") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # the 2 MB are sent at once; then the transfer stalls
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hub.release()
    return {"killed_after_bytes_sent": 2_000_000}


def main() -> None:
    from hubserver import FakeHub, unused_endpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    import huggingface_hub

    results = {"huggingface_hub": huggingface_hub.__version__, "file_bytes": SIZE, "python": sys.version.split()[0]}
    refused = unused_endpoint()
    with socket.socket() as sink, FakeHub() as hub:
        sink.bind(("127.0.0.1", 0))
        sink.listen(64)  # the kernel accepts; nobody ever answers
        blackhole = f"http://127.0.0.1:{sink.getsockname()[1]}"
        hub.add_file(REPO, COMMIT, FILE, DATA)
        fast = {"HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1"}
        for kind in ("hf", "unclip"):
            r = results[kind] = {}
            r["offline"] = scenario_unreachable(kind, hub.endpoint, HF_HUB_OFFLINE="1")
            r["refused_default_timeouts"] = scenario_unreachable(kind, refused)
            r["refused_timeouts_1s"] = scenario_unreachable(kind, refused, **fast)
            r["blackhole_timeouts_1s"] = scenario_unreachable(kind, blackhole, **fast)
            r["flaky_3MB_per_connection"] = scenario_faulty(kind, hub, "flaky")
            r["killed_then_rerun"] = scenario_faulty(kind, hub, "killed", again=True)
            r["bad_transfer"] = scenario_faulty(kind, hub, "bad-transfer")
            r["bad_cache"] = scenario_faulty(kind, hub, "bad-cache")
            print(kind, json.dumps(r, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
