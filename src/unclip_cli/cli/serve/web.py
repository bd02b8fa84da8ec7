"""The Starlette app of `unclip serve`: the page, the JSON API (README, "Web page"), and the checks
every request passes first.

Same origin only: a request must be addressed to this server (its Host an IP address, `localhost`, the
bound host or this machine's name, on our port: a DNS-rebinding page's Host is its own domain), a
browser's `Origin` must be that same address, and `Sec-Fetch-Site` must not say another site. Scripts
(curl, Python) send neither header and pass. Every error is a JSON object `{"error": "one line"}` with
a 4xx status (5xx only for our own bugs, whose traceback goes to the server's log, never the client).
"""

import contextlib
import ipaddress
import json
import socket
import sys
import traceback
from dataclasses import asdict
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from unclip_cli import __version__, options
from unclip_cli.cli import run
from unclip_cli.cli.serve import files, jobs, requests
from unclip_cli.cli.serve.common import Config, HttpError
from unclip_cli.pipeline import stages as stages_mod

MAX_JSON_BYTES = 64 * 1024
MAX_MULTIPART_OVERHEAD = 64 * 1024
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                 b"base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host_ok(host_header: str, cfg: Config) -> bool:
    host, sep, port = host_header.rpartition(":")
    if not sep or host_header.endswith("]"):  # no port in the header: a browser leaves out port 80
        host, port = host_header, "80"
    if not port.isdigit() or int(port) != cfg.port:
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", cfg.host.strip("[]").lower(), socket.gethostname().lower()):
        return True
    with contextlib.suppress(ValueError):
        return bool(ipaddress.ip_address(host))
    return False


def refusal(headers: Headers, cfg: Config) -> str | None:
    """Why a request is refused as not coming from this server's own page (None: it is not)."""
    host = headers.get("host", "")
    if not _host_ok(host, cfg):
        return f"refused: this server answers only requests addressed to it (Host {host[:60]!r} is not)"
    origin = headers.get("origin")
    if origin is not None and origin != f"http://{host}":
        return f"requests from other origins are refused (Origin {origin[:60]!r})"
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "requests from other sites are refused"
    return None


class SameOrigin:
    """ASGI middleware: refuse other origins with 403 and add the security headers to every response."""

    def __init__(self, app, cfg: Config):
        self.app, self.cfg = app, cfg

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        why = refusal(Headers(scope=scope), self.cfg)
        if why is not None:
            return await JSONResponse({"error": why}, 403)(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


# Routes ----------------------------------------------------------------------------------------


async def page(request: Request) -> Response:
    name = request.path_params.get("name", "index.html")
    if name not in STATIC:
        raise HttpError(f"no such file: {name[:60]!r}", 404)
    data = (resources.files("unclip_cli.cli.serve") / "static" / name).read_bytes()
    return Response(data, media_type=STATIC[name])


async def info(request: Request) -> Response:
    return JSONResponse(request.app.state.info)


async def upload(request: Request) -> Response:
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise HttpError("an upload needs a Content-Length header", 411)
    if int(length) > files.MAX_UPLOAD_BYTES + MAX_MULTIPART_OVERHEAD:
        raise HttpError(f"upload is {length} bytes, over the {files.MAX_UPLOAD_BYTES} byte limit", 413)
    await request.body()  # at most Content-Length bytes: the server reads no further
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=1) as form:
            item = form.get("file")
            if not isinstance(item, UploadFile):
                raise HttpError("a multipart upload needs its image in a field named 'file'")
            data = await item.read()
    else:
        data = await request.body()
    return JSONResponse(await run_in_threadpool(request.app.state.folder.save_upload, data), 201)


async def submit(request: Request) -> Response:
    verb = request.path_params["verb"]
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise HttpError(f"request body over {MAX_JSON_BYTES} bytes", 413)
    body = await request.body()
    if len(body) > MAX_JSON_BYTES:
        raise HttpError(f"request body over {MAX_JSON_BYTES} bytes", 413)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise HttpError("the request body is not valid JSON") from None
    state = request.app.state
    call = await run_in_threadpool(requests.build, verb, data, state.cfg, state.folder, state.info["sizes"])
    job = state.queue.submit(call)
    return JSONResponse({"job": job.to_json()}, 202)


async def job_list(request: Request) -> Response:
    return JSONResponse({"jobs": request.app.state.queue.listing()})


async def job_one(request: Request) -> Response:
    queue = request.app.state.queue
    job_id = request.path_params["job_id"]
    job = queue.cancel(job_id) if request.method == "DELETE" else queue.get(job_id)
    return JSONResponse({"job": job.to_json()})


async def gallery(request: Request) -> Response:
    return JSONResponse({"images": await run_in_threadpool(request.app.state.folder.gallery)})


async def output_file(request: Request) -> Response:
    name, folder = request.path_params["name"], request.app.state.folder
    path = folder.upload(name) if request.url.path.startswith("/uploads/") else folder.output(name)
    headers = {"content-disposition": f'attachment; filename="{path.name}"'} if "download" in request.query_params else None
    return FileResponse(path, media_type="image/gif" if path.suffix == ".gif" else "image/png", headers=headers)


# Errors and the app ----------------------------------------------------------------------------


async def http_error(request: Request, exc: HttpError) -> Response:
    return JSONResponse({"error": str(exc)}, exc.status)


async def starlette_error(request: Request, exc: HTTPException) -> Response:
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": message}, exc.status_code)


async def internal_error(request: Request, exc: Exception) -> Response:
    traceback.print_exception(exc, file=sys.stderr)
    return JSONResponse({"error": f"internal error ({exc.__class__.__name__}); see the server's log"}, 500)


def model_info(cfg: Config) -> dict:
    """What the page needs to know: the model, its sizes and default options, the limits."""
    device = run.pick_device(cfg.device)
    stages, size = stages_mod.open_model(cfg.model, device, run.pick_dtype(cfg.dtype, device), None)
    defaults = options.resolve(stages.spec.defaults, {}, size)
    return {"model": stages.spec.name, "version": __version__, "size": size, "sizes": stages.sizes(),
            "has_prior": stages.has("prior"), "has_image_encoder": stages.spec.has_image_encoder,
            "defaults": asdict(defaults),
            "options": [{"name": o.name, "type": o.type.__name__, "stage": o.stage, "verbs": requests.option_verbs(o, stages.spec),
                         "help": o.help, "low": o.low, "high": o.high, "choices": list(o.choices)}
                        for o in options.SAMPLING],
            "limits": {"upload_bytes": files.MAX_UPLOAD_BYTES, "upload_pixels": files.MAX_UPLOAD_PIXELS,
                       "upload_formats": list(files.UPLOAD_FORMATS), "images_per_job": requests.MAX_IMAGES,
                       "queued_jobs": jobs.MAX_QUEUED}}


def create_app(cfg: Config) -> Starlette:
    """The app, with the model checked (one line if it cannot be opened) and the output folder made."""
    folder = files.Folder(cfg.outdir)
    queue = jobs.Queue()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.stop)

    routes = [
        Route("/", page), Route("/static/{name}", page), Route("/api/info", info), Route("/api/images", gallery),
        Route("/api/uploads", upload, methods=["POST"]), Route("/api/jobs", job_list),
        Route("/api/jobs/{job_id}", job_one, methods=["GET", "DELETE"]),
        Route("/api/{verb}", submit, methods=["POST"]), Route("/files/{name:path}", output_file),
        Route("/uploads/{name:path}", output_file),
    ]
    handlers = {HttpError: http_error, HTTPException: starlette_error, Exception: internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.add_middleware(SameOrigin, cfg=cfg)
    app.state.cfg, app.state.folder, app.state.queue = cfg, folder, queue
    app.state.info = model_info(cfg)
    app.state.model = app.state.info["model"]
    return app
