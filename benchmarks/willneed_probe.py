"""Does posix_fadvise(WILLNEED) warm a file in the background on this disk, and how fast?

Usage: python benchmarks/willneed_probe.py FILE [--wait 8]
Drops FILE from the page cache, then reads it sequentially (64 MB reads): once cold, once after asking for it
with WILLNEED and waiting `--wait` seconds, twice each, alternating; then once more cold and once warm.
"""

import argparse
import os
import time
from pathlib import Path



def read(path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass
    return time.perf_counter() - t


def drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", type=Path)
    ap.add_argument("--wait", type=float, default=8.0)
    args = ap.parse_args()
    size = args.file.stat().st_size
    for mode in ("cold", "willneed", "cold", "willneed"):
        drop(args.file)
        if mode == "willneed":
            fd = os.open(args.file, os.O_RDONLY)
            for off in range(0, size, 64 << 20):
                os.posix_fadvise(fd, off, min(64 << 20, size - off), os.POSIX_FADV_WILLNEED)
            os.close(fd)
            time.sleep(args.wait)
        print(f"{mode:9s} read {size / 2**30:.2f} GB in {read(args.file):.2f} s", flush=True)
    drop(args.file)
    print(f"cold, then warm: {read(args.file):.2f} s, {read(args.file):.2f} s")


if __name__ == "__main__":
    main()
