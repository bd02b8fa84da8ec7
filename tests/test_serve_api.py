"""`unclip serve`'s JSON API through Starlette's test client, on the tiny random model (fixture `home`):
every verb (the same pixels and metadata as the CLI), bad requests and uploads (a JSON error and a 4xx,
never a traceback), path tricks, other origins, the queue (one job at a time, cancel, stop), and the real
process stopped by Ctrl-C."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[test]'")
from starlette.testclient import TestClient  # noqa: E402

from test_cli import invoke, mask_image, pixels, run_ok, source_image  # noqa: E402
from unclip_cli.cli.serve import Config, files, jobs, web  # noqa: E402
from unclip_cli.pipeline import images  # noqa: E402

FAST = {"prior_steps": 2, "decoder_steps": 2, "sr_steps": 2, "size": 64}
CLI_FAST = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2", "--size", "64"]
BASE = "http://127.0.0.1:7860"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def client(home, out):
    with TestClient(web.create_app(Config(outdir=out)), base_url=BASE) as c:
        yield c


def png(im: Image.Image) -> bytes:
    buf = BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def upload(client, data: bytes, content_type: str = "image/png") -> dict:
    r = client.post("/api/uploads", content=data, headers={"content-type": content_type})
    assert r.status_code == 201, r.text
    return r.json()


def upload_file(client, path: Path) -> str:
    return upload(client, path.read_bytes())["id"]


def finished(client, job_id: str, limit: float = 300) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()["job"]
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish: {job}")


def submit(client, verb: str, **body) -> dict:
    r = client.post(f"/api/{verb}", json=body)
    assert r.status_code == 202, r.text
    return r.json()["job"]


def run_job(client, verb: str, **body) -> dict:
    job = finished(client, submit(client, verb, **body)["id"])
    assert job["state"] == "done", job
    return job


def refused(r, status: int, *needles: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in r.text
    for needle in needles:
        assert needle in body["error"], body["error"]
    return body["error"]


def no_stray_files(out: Path) -> None:
    """Only finished outputs and the uploads folder: no temporary or partial file anywhere."""
    for p in out.rglob("*"):
        assert p.is_dir() or files.OUTPUT_NAME.fullmatch(p.name) or files.UPLOAD_NAME.fullmatch(p.name), p


# --------------------------------------------------------------------------- the page and the verbs


def test_page_static_files_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="edit-mask"' in page.text and "/static/app.js" in page.text
    assert "http" not in re.sub(r"https?://www\.w3\.org", "", page.text)  # nothing fetched from elsewhere
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 1000 and "http://" not in r.text and "https://" not in r.text
    refused(client.get("/static/secret.py"), 404)
    refused(client.get("/static/..%2f__init__.py"), 404)
    info = client.get("/api/info").json()
    assert info["model"] == "tiny" and 64 in info["sizes"] and info["defaults"]["decoder_steps"] == 3
    assert info["limits"]["upload_pixels"] == files.MAX_UPLOAD_PIXELS
    assert {o["name"] for o in info["options"]} >= {"prior_steps", "decoder_guidance", "sampler", "resample"}
    verbs = {o["name"]: o["verbs"] for o in info["options"]}  # the page takes which verbs take what from here
    assert verbs["resample"] == ["edit"] and verbs["negative_rescale"] == ["generate", "edit"]
    assert verbs["image_candidates"] == ["generate"]
    assert verbs["decoder_steps"] == ["generate", "edit", "vary", "mix"]


def test_generate_is_the_cli_image_with_the_cli_metadata(client, out, tmp_path):
    job = run_job(client, "generate", prompt="a red circle", seed=5, num_images=2, **FAST)
    assert job["images"] == ["00000-5-a-red-circle.png", "00001-6-a-red-circle.png"]
    assert job["stages"][0] == "prior" and "decoder" in job["stages"]
    cli = run_ok("generate", "a red circle", "--seed", 5, "-n", 2, *CLI_FAST, "-o", tmp_path / "cli")
    for name, rec in zip(job["images"], cli["images"]):
        assert np.array_equal(pixels(out / name), pixels(rec["path"]))
        assert images.read_params(out / name) == images.read_params(rec["path"])  # JSON and A1111 text alike
    gallery = client.get("/api/images").json()["images"]
    assert [g["name"] for g in gallery] == list(reversed(job["images"]))  # newest first
    assert gallery[0]["params"]["seed"] == 6 and gallery[0]["url"] == f"/files/{job['images'][1]}"
    r = client.get(gallery[0]["url"] + "?download=1")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == (out / job["images"][1]).read_bytes()
    assert "attachment" in r.headers["content-disposition"]
    no_stray_files(out)


def test_edit_keeps_every_unpainted_pixel_and_matches_the_cli(client, out, tmp_path):
    src = source_image(tmp_path / "src.png", 64)
    mask, edited = mask_image(tmp_path / "mask.png", 64)
    image_id, mask_id = upload_file(client, src), upload_file(client, mask)
    job = run_job(client, "edit", image=image_id, mask=mask_id, prompt="a green triangle", seed=3, **FAST)
    result = pixels(out / job["images"][0])
    assert np.array_equal(result[~edited], pixels(src)[~edited]) and not np.array_equal(result, pixels(src))
    params = images.read_params(out / job["images"][0])[0]
    assert params["mode"] == "edit" and params["mask"] == str(out.resolve() / "uploads" / mask_id)
    cli = run_ok("edit", out / "uploads" / image_id, "a green triangle", "--mask", out / "uploads" / mask_id,
                 "--seed", 3, *CLI_FAST, "-o", tmp_path / "cli")
    assert np.array_equal(result, pixels(cli["images"][0]["path"]))
    # a result used as the input ("use as input" in the gallery), the mask inverted, alpha as the mask
    again = run_job(client, "edit", image=job["images"][0], mask=mask_id, invert_mask=True, prompt="a dot", seed=4, **FAST)
    assert np.array_equal(pixels(out / again["images"][0])[edited], result[edited])
    rgba = np.concatenate([pixels(src), np.where(edited, 0, 255).astype(np.uint8)[..., None]], axis=-1)
    alpha_id = upload(client, png(Image.fromarray(rgba, "RGBA")))["id"]
    job = run_job(client, "edit", image=alpha_id, prompt="a dot", seed=1, **FAST)
    assert np.array_equal(pixels(out / job["images"][0])[~edited][:, :3], pixels(src)[~edited])


def test_vary_and_mix(client, out, tmp_path):
    image_id = upload_file(client, source_image(tmp_path / "src.png", 64))
    job = run_job(client, "vary", image=image_id, strength=0.5, seed=2, **FAST)
    params = images.read_params(out / job["images"][0])[0]
    assert params["mode"] == "vary" and params["strength"] == 0.5
    cli = run_ok("vary", out / "uploads" / image_id, "--strength", 0.5, "--seed", 2, *CLI_FAST, "-o", tmp_path / "cli")
    assert np.array_equal(pixels(out / job["images"][0]), pixels(cli["images"][0]["path"]))
    job = run_job(client, "mix", a={"image": image_id}, b={"text": "a blue square"}, frames=2, seed=1, **FAST)
    assert len(job["images"]) == 3 and job["images"][-1].endswith(".gif")
    params = images.read_params(out / job["images"][1])[0]
    assert params["ratio"] == 1.0 and params["mix_b"] == "text:a blue square"
    assert client.get(f"/files/{job['images'][-1]}").headers["content-type"] == "image/gif"
    run_job(client, "mix", a={"image": job["images"][0]}, b={"image": image_id}, ratio=0.25, seed=1, **FAST)


# --------------------------------------------------------------------------- bad requests


BAD_JOBS = [
    ("generate", {"prompt": "x", "colour": "red"}, 400, "unknown field 'colour'"),
    ("generate", {}, 400, "'prompt' is required"),
    ("generate", {"prompt": "   "}, 400, "the prompt is empty"),
    ("generate", {"prompt": 3}, 400, "'prompt' must be text"),
    ("generate", {"prompt": "x", "num_images": "2"}, 400, "'num_images' must be an integer"),
    ("generate", {"prompt": "x", "num_images": True}, 400, "'num_images' must be an integer"),
    ("generate", {"prompt": "x", "num_images": 0}, 400, "num_images must be at least 1"),
    ("generate", {"prompt": "x", "num_images": 17}, 400, "at most 16"),
    ("generate", {"prompt": "x", "seed": -1}, 400, "seed must be a non-negative integer"),
    ("generate", {"prompt": "x", "decoder_steps": 0}, 400, "decoder_steps must be between 1 and 1000"),
    ("generate", {"prompt": "x", "sampler": "euler"}, 400, "sampler must be ddpm or ddim or dpmpp_2m"),
    ("generate", {"prompt": "x", "size": 48}, 400, "size must be"),
    ("generate", {"prompt": "x", "resample": 2}, 400, "unknown field 'resample'"),
    ("generate", {"prompt": "x", "negative_rescale": 1.5}, 400, "negative_rescale must be between 0.0 and 1.0"),
    ("vary", {"image": "IMAGE", "negative_rescale": 0.5}, 400, "unknown field 'negative_rescale'"),
    ("generate", {"prompt": "x" * 2001}, 400, "over the 2000 limit"),
    ("generate", ["a list"], 400, "must be a JSON object"),
    ("paint", {"prompt": "x"}, 404, "no such verb"),
    ("edit", {"image": "../../etc/passwd", "prompt": "x"}, 404, "no such file"),
    ("edit", {"image": "/etc/passwd", "prompt": "x"}, 404, "no such file"),
    ("edit", {"image": "00000-upload-0123456789abcdef.png", "prompt": "x"}, 404, "no such file"),
    ("edit", {"image": "IMAGE", "prompt": "x"}, 400, "has no alpha channel"),
    ("edit", {"image": "IMAGE", "mask": "EMPTY", "prompt": "x"}, 400, "marks nothing to edit"),
    ("edit", {"image": "IMAGE", "mask": "SMALL", "prompt": "x"}, 400, "is 32x32 but the image is 64x64"),
    ("edit", {"image": "IMAGE", "mask": "MASK", "prompt": "x", "mask_blur": -1}, 400, "mask_blur must not be negative"),
    ("vary", {"image": "IMAGE", "strength": 0}, 400, "strength must be above 0"),
    ("vary", {"image": "IMAGE", "amount": 0.3}, 400, "from and amount need toward"),
    ("mix", {"a": {"text": "a cat"}, "b": {"text": "a cat"}}, 400, "the same text"),
    ("mix", {"a": {"text": "a cat"}, "b": {"path": "/etc/passwd"}}, 400, "must be {\"image\": ID}"),
    ("mix", {"a": {"text": "a"}, "b": {"text": "b"}, "ratio": 2}, 400, "ratio must be between 0 and 1"),
    ("mix", {"a": {"text": "a"}, "b": {"text": "b"}, "ratio": 0.5, "frames": 3}, 400, "not both"),
    ("mix", {"a": {"text": "a"}, "b": {"text": "b"}, "frames": 5000}, 400, "frames must be between 2 and 16"),
    ("mix", {"a": {"text": "a"}, "b": {"text": "b"}, "frames": 8, "num_images": 3}, 400,
     "num_images x frames must be at most 16 images per job, got 3 x 8"),
]


@pytest.mark.parametrize("verb, body, status, needle", BAD_JOBS, ids=[f"{v}-{n[:24]}" for v, _, _, n in BAD_JOBS])
def test_bad_job_requests_get_a_json_error(client, out, tmp_path, verb, body, status, needle):
    refs = {"IMAGE": upload_file(client, source_image(tmp_path / "s.png", 64)),
            "MASK": upload_file(client, mask_image(tmp_path / "m.png", 64)[0]),
            "EMPTY": upload(client, png(Image.new("L", (64, 64), 0)))["id"],
            "SMALL": upload(client, png(Image.new("L", (32, 32), 255)))["id"]}
    body = json.loads(json.dumps(body), object_hook=lambda d: {k: refs.get(v, v) if isinstance(v, str) else v
                                                                for k, v in d.items()})
    refused(client.post(f"/api/{verb}", json=body), status, needle)
    assert client.get("/api/jobs").json()["jobs"] == []  # nothing queued


def test_malformed_bodies(client):
    refused(client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON")
    refused(client.post("/api/generate", content=b"[" * 100000), 413, "over 65536 bytes")
    refused(client.post("/api/generate", content=b'{"prompt": NaN}'), 400, "'prompt' must be text")
    refused(client.post("/api/generate", content=b'{"prompt": "x", "decoder_guidance": 1e999}'), 400, "finite")
    refused(client.post("/api/generate", content=b'{"prompt": "x", "seed": NaN}'), 400, "'seed' must be an integer")
    refused(client.get("/api/generate"), 405)
    refused(client.get("/api/nothing/here"), 404, "not found")
    refused(client.get("/api/jobs/nope"), 404, "no such job")


def bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header for a w x h grey image with a tiny (deflated zeros) body."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    rows = zlib.compress(b"\0" * (w + 1) * h, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0]))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


BAD_UPLOADS = [
    (b"", 415, "upload is empty"),
    (b"hello, this is not an image", 415, "not an image in a format accepted here"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415, "not an image in a format accepted here"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not an image in a format accepted here"),
    ("TRUNCATED", 415, "not a readable image"),
    ("BOMB", 413, "5000x5000: image too large (the limit is 16 megapixels, e.g. 4096x4096)"),
]


@pytest.mark.parametrize("data, status, needle", BAD_UPLOADS, ids=["empty", "text", "svg", "eps", "truncated", "pixels"])
def test_bad_uploads_are_refused(client, out, data, status, needle):
    if data == "TRUNCATED":
        data = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))[:-200]
    elif data == "BOMB":
        data = bomb_png(5000, 5000)
        assert len(data) < 100_000
    refused(client.post("/api/uploads", content=data, headers={"content-type": "image/png"}), status, needle)
    assert not (out / "uploads").exists() or not any((out / "uploads").iterdir())


def test_upload_size_limit_and_multipart(client, out, monkeypatch):
    monkeypatch.setattr(files, "MAX_UPLOAD_BYTES", 1000)
    r = client.post("/api/uploads", content=b"\0" * (1000 + web.MAX_MULTIPART_OVERHEAD + 1))
    refused(r, 413, "over the 1000 byte limit")
    refused(client.post("/api/uploads", content=b"\0" * 1500), 413, "over the 1000 byte limit")
    monkeypatch.undo()
    good = png(Image.new("RGB", (20, 10), (1, 2, 3)))
    r = client.post("/api/uploads", files={"file": ("../../escape.png", good, "image/png")})  # the client's name is ignored
    assert r.status_code == 201 and files.UPLOAD_NAME.fullmatch(r.json()["id"]) and r.json()["width"] == 20
    assert not list(out.parent.rglob("escape*"))
    refused(client.post("/api/uploads", files={"other": ("a.png", good, "image/png")}), 400, "a field named 'file'")
    stored = out / "uploads" / r.json()["id"]
    assert np.array_equal(pixels(stored), np.full((10, 20, 3), (1, 2, 3), np.uint8))
    assert client.get(f"/uploads/{r.json()['id']}").content == stored.read_bytes()


# --------------------------------------------------------------------------- nothing outside the output folder


def test_path_tricks_serve_nothing_outside_the_output_folder(client, out, tmp_path):
    job = run_job(client, "generate", prompt="a dot", seed=1, **FAST)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(Image.new("RGB", (4, 4))))
    (out / "00099-1-link.png").symlink_to(secret)  # a symlink with an output's name
    (out / "sub").mkdir()
    (out / "sub" / "00098-1-deep.png").write_bytes(secret.read_bytes())
    (out / ".unclip-tmp-1-0-x").write_bytes(b"partial")
    uploaded = upload_file(client, secret)
    for path in ["/files/../secret.png", "/files/..%2fsecret.png", "/files/%2e%2e/secret.png", "/files/%2e%2e%2fsecret.png",
                 "/files/..%5csecret.png", "/files//etc/passwd", "/files/%2fetc%2fpasswd", "/files/00099-1-link.png",
                 "/files/sub/00098-1-deep.png", "/files/.unclip-tmp-1-0-x", f"/files/uploads/{uploaded}",
                 f"/uploads/../{job['images'][0]}", "/uploads/..%2f..%2fsecret.png", "/files/00000-1-a-dot.png%00.txt"]:
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert r.headers["content-type"] == "application/json", path
    assert client.get(f"/files/{job['images'][0]}").status_code == 200
    r = client.post("/api/edit", json={"image": "00099-1-link.png", "mask": uploaded, "prompt": "x"})
    refused(r, 404, "no such file")
    names = [g["name"] for g in client.get("/api/images").json()["images"]]
    assert names == job["images"]


# --------------------------------------------------------------------------- other origins


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"}, {"origin": "http://127.0.0.1:7861"}, {"origin": "null"},
    {"host": "evil.example:7860"}, {"host": "127.0.0.1:9999"}, {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
], ids=["origin", "other-port", "null-origin", "rebinding-host", "host-port", "cross-site", "same-site"])
def test_requests_from_other_origins_are_refused(client, out, headers):
    for method, path, kw in [("post", "/api/generate", {"json": {"prompt": "x"}}), ("get", "/api/images", {}),
                             ("post", "/api/uploads", {"content": png(Image.new("RGB", (4, 4)))}), ("get", "/", {})]:
        r = getattr(client, method)(path, headers=headers, **kw)
        refused(r, 403, "refused")
    assert client.get("/api/jobs").json()["jobs"] == [] and not (out / "uploads").exists()


def test_same_origin_and_scripts_are_served(client):
    for headers in [{}, {"origin": BASE, "sec-fetch-site": "same-origin"}, {"host": "localhost:7860"},
                    {"sec-fetch-site": "none"}]:
        assert client.get("/api/images", headers=headers).status_code == 200, headers


# --------------------------------------------------------------------------- the queue


@pytest.fixture
def held(monkeypatch):
    """After the first image of the run the worker waits until its job is cancelled (so a test can act mid-job)."""
    first = threading.Event()
    real = jobs.Queue._image

    def hold(self, job, path):
        real(self, job, path)
        if not first.is_set():
            first.set()
            assert job.cancel.wait(60), "never cancelled"

    monkeypatch.setattr(jobs.Queue, "_image", hold)
    return first


def test_one_job_at_a_time_and_cancel_keeps_the_written_images(client, out, held):
    a = submit(client, "generate", prompt="a dot", seed=1, num_images=3, batch_size=1, **FAST)
    b = submit(client, "generate", prompt="a square", seed=9, **FAST)
    assert held.wait(120)
    listing = {j["id"]: j for j in client.get("/api/jobs").json()["jobs"]}
    assert listing[a["id"]]["state"] == "running" and listing[b["id"]]["state"] == "queued"
    assert listing[b["id"]]["position"] == 1
    assert client.delete(f"/api/jobs/{b['id']}").json()["job"]["state"] == "cancelled"
    client.delete(f"/api/jobs/{a['id']}")
    job = finished(client, a["id"])
    assert job["state"] == "cancelled" and job["images"] == ["00000-1-a-dot.png"]
    assert "1 image written" in job["error"]
    assert sorted(p.name for p in out.glob("*.png")) == ["00000-1-a-dot.png"]
    no_stray_files(out)
    run_job(client, "generate", prompt="a dot", seed=2, **FAST)  # the queue goes on


def test_stopping_the_server_stops_the_job_in_flight_and_keeps_its_images(home, out, held):
    with TestClient(web.create_app(Config(outdir=out)), base_url=BASE) as c:
        a = submit(c, "generate", prompt="a dot", seed=1, num_images=3, batch_size=1, **FAST)
        b = submit(c, "generate", prompt="a square", seed=9, **FAST)
        assert held.wait(120)
        queue = c.app.state.queue
    # leaving the block ran the shutdown: as Ctrl-C does
    assert queue.get(a["id"]).state == "stopped" and queue.get(a["id"]).images == ["00000-1-a-dot.png"]
    assert queue.get(b["id"]).state == "cancelled"
    assert queue.summary() == "1 image written this session"
    assert [p.name for p in out.glob("*.png")] == ["00000-1-a-dot.png"]
    no_stray_files(out)


def test_a_failing_job_reports_one_line(client, home):
    (home / "guidelines.txt").write_text("forbidden\n")
    job = finished(client, submit(client, "generate", prompt="a forbidden dot", **FAST)["id"])
    assert job["state"] == "failed" and "refused by the guidelines" in job["error"] and "\n" not in job["error"]


# --------------------------------------------------------------------------- the command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, out: Path, port: int, *extra) -> subprocess.Popen:
    env = {**os.environ, "UNCLIP_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "unclip_cli", "serve", "--port", str(port), "-o", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_up(proc, port: int, limit: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"unclip serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("unclip serve did not come up")


def test_ctrl_c_stops_the_server_cleanly(home, out):
    import httpx

    port = free_port()
    proc = start_server(home, out, port)
    try:
        wait_until_up(proc, port)
        url = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{url}/api/generate", json={"prompt": "a dot", "seed": 1, "num_images": 2, "batch_size": 1, **FAST})
        assert r.status_code == 202, r.text
        job = r.json()["job"]["id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/api/jobs/{job}").json()["job"]["state"] != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[0].startswith(f"unclip serve: http://127.0.0.1:{port}/ (model tiny") and "Traceback" not in stderr
    assert lines[-1] == "stopped: 2 images written this session"
    assert sorted(p.name for p in out.glob("*.png")) == ["00000-1-a-dot.png", "00001-2-a-dot.png"]
    no_stray_files(out)


def test_serve_without_the_extra_says_how_to_install_it(home, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    r = invoke("serve")
    assert r.exit_code == 1 and r.stderr.strip() == ("error: unclip serve needs the web extra: pip install "
                                                     "'unclip-cli[serve]' (uvicorn is not installed)")


def test_other_hosts_warn_and_bad_options_are_one_line(home, out, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: setattr(self, "started", True))
    r = invoke("serve", "--host", "0.0.0.0", "-o", out)
    assert r.exit_code == 0 and r.stderr.startswith("warning: serving on 0.0.0.0, not 127.0.0.1"), r.stderr
    r = invoke("serve", "-o", out)
    assert r.exit_code == 0 and not r.stderr.startswith("warning"), r.stderr
    for args, needle in [(["--port", "70000"], "--port must be between 1 and 65535"),
                         (["--model", "nope"], "nope")]:
        r = invoke("serve", *args, "-o", out)
        assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_help_does_not_import_the_web_stack():
    code = ("import sys; from unclip_cli.cli.app import app; from typer.testing import CliRunner; "
            "CliRunner().invoke(app, ['--help']); CliRunner().invoke(app, ['serve', '--help']); "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'multipart', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"


def test_host_header_without_a_port_means_port_80():
    from unclip_cli.cli.serve import web
    from unclip_cli.cli.serve.common import Config

    cfg80 = Config(host="127.0.0.1", port=80, model=None, outdir=Path("."))
    assert web._host_ok("127.0.0.1", cfg80) and web._host_ok("localhost", cfg80) and web._host_ok("[::1]", cfg80)
    assert not web._host_ok("127.0.0.1", Config(host="127.0.0.1", port=7860, model=None, outdir=Path(".")))
    assert web._host_ok("127.0.0.1:7860", Config(host="127.0.0.1", port=7860, model=None, outdir=Path(".")))
    assert not web._host_ok("evil.example", cfg80)


def test_a_port_in_use_is_one_line_before_anything_claims_to_serve(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "unclip_cli", "serve", "--port", str(port), "--outdir", str(tmp_path)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert r.returncode == 1 and r.stderr == f"error: could not listen on 127.0.0.1:{port} (in use)\n"


def test_generate_takes_the_negative_prompt_and_its_rescale_as_the_cli_does(client, out, tmp_path):
    job = run_job(client, "generate", prompt="a red circle", negative_prompt="red", negative_rescale=0.5, seed=2,
                  **FAST)
    cli = run_ok("generate", "a red circle", "--negative-prompt", "red", "--negative-rescale", 0.5, "--seed", 2,
                 *CLI_FAST, "-o", tmp_path / "cli")
    params, text = images.read_params(out / job["images"][0])
    assert (params, text) == images.read_params(cli["images"][0]["path"])
    assert params["negative_rescale"] == 0.5 and "Negative rescale: 0.5" in text
    assert np.array_equal(pixels(out / job["images"][0]), pixels(cli["images"][0]["path"]))


def test_a_model_without_clips_image_tower_offers_no_image_candidates(tmp_path, out):
    """Karlo's layout cannot rank draws by CLIP: /api/info lists image_candidates for no verb (the page leaves the
    field out), and a request that sends it anyway is refused at once with the CLI's one line (400), not queued."""
    pytest.importorskip("diffusers")
    import karlo_tiny

    root = tmp_path / "tiny-karlo"
    karlo_tiny.write_folder(root, seed=0)
    with TestClient(web.create_app(Config(model=str(root), outdir=out)), base_url=BASE) as c:
        verbs = {o["name"]: o["verbs"] for o in c.get("/api/info").json()["options"]}
        assert verbs["image_candidates"] == [] and verbs["decoder_steps"] == ["generate", "edit", "vary", "mix"]
        r = c.post("/api/generate", json={"prompt": "a red circle", "image_candidates": 2})
        assert r.status_code == 400 and "image_candidates needs a CLIP image encoder" in r.json()["error"], r.text
        assert c.get("/api/jobs").json()["jobs"] == []
    assert not any(out.glob("*.png"))


def test_each_verb_is_refused_before_queueing_when_the_model_lacks_what_it_needs(tmp_path, out):
    """/api/info says what the model has (the page hides the rest), and a request for what it lacks gets the CLI's
    one line as a 400, with nothing queued: Karlo's text-only CLIP cannot vary or mix an image; an image-variations
    model (no prior) cannot generate, edit, mix a text or mix toward a caption. What each model can do is queued and
    runs (so the rules do not refuse too much)."""
    pytest.importorskip("diffusers")
    import karlo_tiny

    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    text, fast = {"text": "a red circle"}, {"prior_steps": 2, "decoder_steps": 2, "sr_steps": 2}
    for name, variations in (("tiny-karlo", False), ("tiny-karlo-variations", True)):
        root = tmp_path / name
        karlo_tiny.write_folder(root, seed=0, variations=variations)
        with TestClient(web.create_app(Config(model=str(root), outdir=out)), base_url=BASE) as c:
            info = c.get("/api/info").json()
            assert (info["has_prior"], info["has_image_encoder"]) == (not variations, variations)
            verbs = {o["name"]: o["verbs"] for o in info["options"]}
            assert (verbs["prior_steps"] == [] and verbs["prior_guidance"] == []) == variations  # no prior to run
            image = {"image": upload(c, png(picture))["id"]}
            holed = upload(c, png(Image.merge("RGBA", (*picture.split(), Image.new("L", (64, 64), 0)))))["id"]
            lacks = ([("vary", {"image": image["image"]}, "vary needs a CLIP image encoder"),
                      ("mix", {"a": image, "b": text}, "a mix side that is an image needs a CLIP image encoder")]
                     if not variations else
                     [("generate", {"prompt": "a red circle"}, "generate needs a prior"),
                      ("edit", {"image": holed, "prompt": "a red circle"}, "edit needs a prior"),
                      ("vary", {"image": image["image"], "prompt": "a red circle", "prompt_mix": 0.5},
                       "prompt_mix needs a prior"),
                      ("mix", {"a": image, "b": text}, "a mix side that is a text needs a prior")])
            for verb, body, needle in lacks:
                refused(c.post(f"/api/{verb}", json=body), 400, needle, f"model '{root}' has none")
            assert c.get("/api/jobs").json()["jobs"] == []
            can = ([("generate", {"prompt": "a red circle"}), ("edit", {"image": holed, "prompt": "a red circle"}),
                    ("mix", {"a": text, "b": {"text": "a blue square"}})]
                   if not variations else
                   [("vary", {"image": image["image"]}), ("vary", {"image": image["image"], "prompt": "a red circle"}),
                    ("mix", {"a": image, "b": {"image": upload(c, png(Image.new("RGB", (64, 64), (40, 40, 200))))["id"]}})])
            for verb, body in can:
                job = run_job(c, verb, **body, **fast)
                assert job["images"], (verb, body)
