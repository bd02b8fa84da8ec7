#!/usr/bin/env bash
# Cold-command and import time of the working tree against an older revision, interleaved (this machine is shared
# and noisy: compare pair by pair). Usage: bash benchmarks/cold_start.sh REV [ROUNDS]   (default 5 rounds)
# The old revision runs from a temporary git worktree through PYTHONPATH, with the same venv. Every round times, for
# each revision (which goes first alternates), `import torch` plus open_clip as that revision imports it, then
# `unclip generate "a red circle" -m shapes --seed 0` with an empty UNCLIP_HOME; at the end both revisions' PNGs are
# compared pixel for pixel (their metadata lists the model's file hashes, which differ when a bundled file changed).
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: cold_start.sh REV [ROUNDS]}; ROUNDS=${2:-5}
PY=${PY:-$PWD/.venv/bin/python}
OLD=$(mktemp -d); OUT=$(mktemp -d)
cleanup() { git worktree remove --force "$OLD" >/dev/null 2>&1 || true; rm -rf "$OLD" "$OUT"; git worktree prune; }
trap cleanup EXIT
git worktree add -f --detach "$OLD" "$REV" >/dev/null
export UNCLIP_HOME=$OUT/home
IMPORT='import torch; from unclip_cli.models import clip; getattr(clip, "import_open_clip", lambda: __import__("open_clip"))()'
secs() {  # wall seconds of a command; its stderr is shown and the script stops if it fails
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null 2>"$OUT/err" || { cat "$OUT/err" >&2; return 1; }
  e=$(date +%s.%N)
  printf '%.2f' "$(echo "$e - $s" | bc)"
}
for i in $(seq 1 "$ROUNDS"); do
  order="old new"; [ $((i % 2)) -eq 0 ] && order="new old"
  for v in $order; do
    if [ "$v" = old ]; then export PYTHONPATH=$OLD/src; else export PYTHONPATH=$PWD/src; fi
    imp=$(secs "$PY" -c "$IMPORT")
    rm -rf "$OUT/$v"
    gen=$(secs "$PY" -m unclip_cli generate "a red circle" -m shapes --seed 0 --outdir "$OUT/$v")
    echo "round $i $v import $imp s generate $gen s"
  done
done
"$PY" - "$OUT"/old/*.png "$OUT"/new/*.png <<'PY'
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p)) for p in sys.argv[1:3])
print("same pixels" if np.array_equal(a, b) else f"pixels differ: max {np.abs(a.astype(int) - b).max()} levels")
sys.exit(0 if np.array_equal(a, b) else 1)
PY
