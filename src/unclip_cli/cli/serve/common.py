"""What every module of `unclip serve` shares: its configuration and the API's error."""

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from unclip_cli.errors import UnclipError


class HttpError(UnclipError):
    """A request the API refuses: one line for the JSON body, and its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Config:
    """What `unclip serve` was started with."""

    host: str = "127.0.0.1"
    port: int = 7860
    model: str | None = None
    outdir: Path = Path("outputs")
    device: str = "auto"
    dtype: str = "auto"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
