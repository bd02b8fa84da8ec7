"""SIGINT and SIGTERM as an exception, so a run stops cleanly: `finally` blocks remove temporary
files, and the verb says how many images it wrote before exiting 130 (SIGINT) or 143 (SIGTERM).

No torch here: `cli/app.py` installs the handlers before the verb imports anything heavy.
"""

import signal
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"critical": 0, "pending": None}


class Interrupted(BaseException):
    """Raised by a SIGINT or SIGTERM handler (a BaseException, like KeyboardInterrupt, so no
    `except Exception` swallows it). `message` is the one line the CLI prints."""

    def __init__(self, signum: int, message: str = "interrupted before anything was written"):
        super().__init__(message)
        self.signum, self.message = signum, message

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


def _handler(signum, frame):
    if _state["critical"]:
        _state["pending"] = signum  # raised when the critical section ends
        return
    raise Interrupted(signum)


@contextmanager
def catching():
    """Turn SIGINT and SIGTERM into `Interrupted` inside the block; the old handlers come back after."""
    old = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def deferred():
    """A section a signal must not cut in half (a file's rename and its bookkeeping): a signal that
    arrives inside waits and is raised as the section ends."""
    _state["critical"] += 1
    try:
        yield
    finally:
        _state["critical"] -= 1
        if not _state["critical"] and (signum := _state["pending"]) is not None:
            _state["pending"] = None
            raise Interrupted(signum)
