"""Reading the next stage's file from disk while the current stage samples.

A run reads its stage files one after another (CLIP, prior, decoder, upsamplers) and each is sampled
before the next is loaded. When the files are not in the OS page cache (the first run after a boot,
or a model folder bigger than the free memory), every load waits for the disk. `Readahead` asks the
OS (posix_fadvise WILLNEED) to bring the file that follows the one just loaded into the page cache in
the background, so its load is a memory copy by the time its turn comes. Cached pages cost nothing to
ask for again, and nothing is read into the process's own memory, so peak RSS is unchanged.

One file ahead only, in chunks, and a load of another file stops the warming (the loader reads from
disk itself then; two readers would halve its speed) after the chunk under way; the first chunk is always
asked for, so a file smaller than a chunk is warmed whole.

Off unless UNCLIP_READAHEAD=1 (or true, yes, on): on this machine's disk it made no stage load faster
(benchmarks/bench_readahead.py, README "Speed"); it is kept for disks slower than the loader's parallel reads.
"""

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

CHUNK = 64 << 20  # the warming stops within one chunk of being told to


def _fadvise_willneed(fd: int, offset: int, length: int) -> None:
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)


def supported() -> bool:
    """The OS can be asked to read a file into its page cache."""
    return hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_WILLNEED")


def enabled() -> bool:
    """UNCLIP_READAHEAD asks for it (off by default)."""
    return os.environ.get("UNCLIP_READAHEAD", "").strip().lower() in ("1", "true", "yes", "on")


class Readahead:
    """Warms the file after the one last loaded, in the order a run reads its stage files."""

    def __init__(self, files: Sequence[Path], advise: Callable[[int, int, int], None] | None = None):
        self.files = [Path(p) for p in files]
        self._advise = advise or (_fadvise_willneed if supported() and enabled() else None)
        self._target: Path | None = None  # the file being warmed; a warming thread stops when it changes
        self.threads: list[threading.Thread] = []  # started warmers (tests join them)

    def loading(self, paths: Sequence[Path]) -> None:
        """The loader starts reading `paths`: stop warming any other file."""
        if self._target not in [Path(p) for p in paths]:
            self._target = None

    def loaded(self, paths: Sequence[Path]) -> None:
        """The loader has read `paths`: warm the file that follows the last of them."""
        later = [self.files.index(Path(p)) for p in paths if Path(p) in self.files]
        nxt = max(later, default=-1) + 1
        self._target = self.files[nxt] if later and nxt < len(self.files) and self._advise else None
        if self._target is None:
            return
        thread = threading.Thread(target=self._warm, args=(self._target,), daemon=True, name="unclip-readahead")
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _warm(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # the loader reports a missing or unreadable file itself
        try:
            size = os.fstat(fd).st_size
            for offset in range(0, size, CHUNK):
                if offset and self._target != path:  # (the first chunk always: a tiny file is warmed whole)
                    return
                self._advise(fd, offset, min(CHUNK, size - offset))
        except OSError:
            return  # warming is an optimisation only
        finally:
            os.close(fd)
