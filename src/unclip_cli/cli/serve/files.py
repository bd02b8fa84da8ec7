"""Files in and out of `unclip serve`, all inside the output folder.

Uploads are decoded (only PNG, JPEG, WebP, GIF and BMP, within MAX_UPLOAD_BYTES and MAX_UPLOAD_PIXELS,
checked from the header before decoding), re-encoded as PNG without their metadata and written under a
name the server makes (`uploads/NNNNN-upload-<random>.png`); the client's file name is never used.
A file is handed out (or used as a job's input) only if its name has the shape the server writes, it
is a plain file directly in its folder (no symlink, no sub-folder, nothing that resolves elsewhere):
`../`, absolute paths and encoded tricks fail the name check before the disk is touched.
"""

import re
import secrets
from pathlib import Path

from unclip_cli.cli.serve.common import HttpError
from unclip_cli.errors import UnclipError
from unclip_cli.pipeline import images

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 4096 * 4096
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
OUTPUT_NAME = re.compile(r"\d{5,}-[0-9a-z][0-9a-z.-]{0,80}\.(png|gif)")  # what cli/run.py and cli/toolkit.py write
UPLOAD_NAME = re.compile(r"\d{5,}-upload-[0-9a-f]{16}\.png")
GALLERY_LIMIT = 200


class Folder:
    """The output folder as the server sees it: outputs at the top, uploads in `uploads/`."""

    def __init__(self, outdir: Path):
        images.check_outdir(outdir)
        self.root = outdir.resolve()
        self.uploads = self.root / "uploads"
        self._params: dict[tuple, dict | None] = {}  # (name, mtime, size) -> parameters, for the gallery

    def save_upload(self, data: bytes) -> dict:
        """An uploaded image, checked and stored as PNG; returns its id (file name) and size."""
        if len(data) > MAX_UPLOAD_BYTES:
            raise HttpError(f"upload is {len(data)} bytes, over the {MAX_UPLOAD_BYTES} byte limit", 413)
        try:
            im = images.image_from_bytes(data, "upload", MAX_UPLOAD_PIXELS, UPLOAD_FORMATS)
        except UnclipError as e:
            raise HttpError(str(e), 413 if "too large" in str(e) else 415) from None
        if self.uploads.is_symlink():
            raise HttpError(f"{self.uploads} is a symlink; uploads are only written inside the output folder", 500)
        self.uploads.mkdir(exist_ok=True)
        path = images.save_new(self.uploads, f"upload-{secrets.token_hex(8)}", images.png_bytes(im, None))
        return {"id": path.name, "width": im.size[0], "height": im.size[1], "mode": im.mode}

    def output(self, name: str) -> Path:
        """An output file of this folder, by name; 404 for anything else."""
        return _inside(self.root, name, OUTPUT_NAME)

    def upload(self, name: str) -> Path:
        """An uploaded image, by its id; 404 for anything else."""
        return _inside(self.uploads, name, UPLOAD_NAME)

    def input(self, ref: str) -> Path:
        """A job's input image: an upload id or an output file name."""
        if UPLOAD_NAME.fullmatch(ref):
            return _inside(self.uploads, ref, UPLOAD_NAME)
        return _inside(self.root, ref, OUTPUT_NAME)

    def gallery(self) -> list[dict]:
        """The newest output images (PNG and GIF), newest first, each with its stored parameters."""
        found = sorted((p for p in self.root.iterdir() if OUTPUT_NAME.fullmatch(p.name)),
                       key=lambda p: (int(p.name.split("-", 1)[0]), p.name), reverse=True)
        out = []
        for p in found[:GALLERY_LIMIT]:
            if p.is_symlink() or not p.is_file():
                continue
            out.append({"name": p.name, "url": f"/files/{p.name}", "params": self._read_params(p)})
        return out

    def _read_params(self, path: Path) -> dict | None:
        st = path.stat()
        key = (path.name, st.st_mtime_ns, st.st_size)
        if key not in self._params:
            try:
                self._params[key] = images.read_params(path)[0] if path.suffix == ".png" else None
            except UnclipError:
                self._params[key] = None  # unreadable metadata: shown without parameters
        return self._params[key]


def _inside(folder: Path, name: str, pattern: re.Pattern) -> Path:
    if not isinstance(name, str) or not pattern.fullmatch(name) or ".." in name:
        raise HttpError(f"no such file: {name!r}" if isinstance(name, str) and len(name) < 200 else "no such file", 404)
    path = folder / name
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder:
        raise HttpError(f"no such file: {name!r}", 404)
    return path
