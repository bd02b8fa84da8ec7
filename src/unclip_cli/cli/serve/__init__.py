"""`unclip serve`: the verbs behind a local web page and the JSON API it calls (README, "Web page").

`web.py` is the Starlette app (routes, same-origin checks, JSON errors); `jobs.py` the queue that runs
one job at a time, in a worker thread, through the verbs' own code (`cli/run.py`, `cli/toolkit.py`);
`requests.py` turns a JSON body into a checked verb call; `files.py` takes uploads in and hands output
files out, never anything outside the output folder; `common.py` holds the configuration and the API's
error; `static/` is the page (plain HTML, CSS, JS).

The web stack (Starlette, uvicorn, python-multipart) is the optional extra `unclip-cli[serve]`: it is
imported only by this command, so `unclip --help` and the other verbs never load it.
"""

import os
import sys

from unclip_cli.cli import interrupts
from unclip_cli.cli.serve.common import Config, is_loopback
from unclip_cli.errors import UnclipError

EXTRA = ("starlette", "uvicorn", "multipart")
__all__ = ["Config", "check_installed", "main"]


def check_installed() -> None:
    """One line saying how to install the web extra, if any part of it is missing."""
    import importlib.util

    for name in EXTRA:
        if importlib.util.find_spec(name) is None:
            pkg = "python-multipart" if name == "multipart" else name
            raise UnclipError(f"unclip serve needs the web extra: pip install 'unclip-cli[serve]' ({pkg} is not installed)")


def main(cfg: Config) -> None:
    """Check the model and the output folder, then serve until Ctrl-C (or SIGTERM); the job in flight
    stops after its current step, its finished images kept, and the process exits 130 (143)."""
    check_installed()
    if not 1 <= cfg.port <= 65535:
        raise UnclipError(f"--port must be between 1 and 65535, got {cfg.port}")
    import uvicorn

    from unclip_cli.cli.serve import web

    _check_port(cfg.host, cfg.port)  # before the model opens and before anything claims to be serving
    os.environ["UNCLIP_QUIET"] = "1"  # no progress bars: the page shows the progress, the log one line per job
    app = web.create_app(cfg)  # opens the model (fails here, in one line, if it cannot)
    if not is_loopback(cfg.host):
        sys.stderr.write(f"warning: serving on {cfg.host}, not 127.0.0.1: anyone who can reach this machine on port "
                         f"{cfg.port} can run jobs and read the images in {cfg.outdir}\n")
    sys.stderr.write(f"unclip serve: http://{web.url_host(cfg.host)}:{cfg.port}/ (model {app.state.model}, images in "
                     f"{cfg.outdir}); Ctrl-C stops\n")
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False))
    try:
        server.run()  # on Ctrl-C uvicorn shuts down (lifespan: the queue stops), then re-raises the signal
    except SystemExit:  # uvicorn exits (status 3) when it cannot bind: say it in our one line instead
        if server.started:
            raise
    except interrupts.Interrupted as e:
        e.message = f"stopped: {app.state.queue.summary()}"
        raise
    if not server.started:
        raise UnclipError(f"could not listen on {cfg.host}:{cfg.port} (in use, or not an address of this machine)")


def _check_port(host: str, port: int) -> None:
    """One line, at once, when the address cannot be listened on (uvicorn would log and exit 3 later)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            why = "in use" if e.errno == 98 else (e.strerror or "cannot bind").lower()
            raise UnclipError(f"could not listen on {host}:{port} ({why})") from None
