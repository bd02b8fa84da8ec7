#!/usr/bin/env bash
# Steps-vs-accuracy curve on `shapes` (issue: faster than diffusers): `unclip eval` (30 held-out prompts, prior
# conditioning, judged at the decoder's 32 px) per dtype / sampler / spacing / steps, one JSON per setting in
# benchmarks/results/steps/. Usage: bash benchmarks/steps_curve.sh [PER_PROMPT] (default 16; seed 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-16}
OUT=benchmarks/results/steps
mkdir -p "$OUT"
UNCLIP=${UNCLIP:-.venv/bin/unclip}
GUIDANCE="--prior-guidance 3 --decoder-guidance 3"  # as measured (the shapes defaults until 2026-12-03)
run() {  # name, then eval flags
  local name=$1; shift
  [ -f "$OUT/$name.json" ] && return 0
  /usr/bin/time -f "$name %e s" "$UNCLIP" eval shapes --per-prompt "$N" --seed 1000 --device cpu $GUIDANCE "$@" \
    --out "$OUT/$name.json" >/dev/null
}
run fp32-ddpm-25 --dtype fp32 --sampler ddpm --spacing uniform --prior-steps 25 --decoder-steps 25
run bf16-ddpm-25 --dtype bf16 --sampler ddpm --spacing uniform --prior-steps 25 --decoder-steps 25
for s in 5 8 12; do
  run "bf16-dpmpp_2m-logsnr-$s" --dtype bf16 --sampler dpmpp_2m --spacing logsnr --prior-steps "$s" --decoder-steps "$s"
done
run bf16-dpmpp_2m-uniform-8 --dtype bf16 --sampler dpmpp_2m --spacing uniform --prior-steps 8 --decoder-steps 8
for s in 8 12 16; do
  run "bf16-dpmpp_2m_sde-logsnr-$s" --dtype bf16 --sampler dpmpp_2m_sde --spacing logsnr --prior-steps "$s" --decoder-steps "$s"
done
# The same through the upsampler, judged at 256 px (30 prompts x 8 images): the old defaults against the new ones.
OUT256=benchmarks/results/steps256
mkdir -p "$OUT256"
run256() {  # name, then eval flags
  local name=$1; shift
  [ -f "$OUT256/$name.json" ] && return 0
  /usr/bin/time -f "$name %e s" "$UNCLIP" eval shapes --per-prompt 8 --seed 1000 --size 256 --device cpu $GUIDANCE \
    "$@" --out "$OUT256/$name.json" >/dev/null
}
run256 bf16-ddpm-25-25-10 --dtype bf16 --sampler ddpm --spacing uniform --prior-steps 25 --decoder-steps 25 --sr-steps 10
run256 bf16-dpmpp_2m_sde-logsnr-16-16-4 --dtype bf16 --sampler dpmpp_2m_sde --spacing logsnr --prior-steps 16 --decoder-steps 16 --sr-steps 4
