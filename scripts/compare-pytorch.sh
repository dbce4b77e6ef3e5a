#!/usr/bin/env bash
# genzoo against the PyTorch CPU peer on the five reference models.
#
# Sets up the peer (shared/peers/pytorch/setup.sh: a venv with torch, about
# 5 GB and a minute from PyPI), then, for each thread count, runs
# `genzoo bench` and the peer's bench.py one after the other (never at once:
# they would share the cores) and prints the genzoo/PyTorch speed ratios.
# Not part of CI: it takes 10-20 minutes on a 2-core machine.
#
#   scripts/compare-pytorch.sh                     # threads 1 and 2, 20 timed steps
#   THREADS="2" STEPS=10 WARMUP=3 scripts/compare-pytorch.sh
#   MODELS=vae-mlp,dcgan-28 scripts/compare-pytorch.sh
#
# Raw records (one JSON object per line, the same keys on both sides) are kept
# in $OUT (default runs/bench); scripts/bench_table.py re-prints the table.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER="${PEER_DIR:-$ROOT/../shared/peers/pytorch}"
VENV="${PEERS_VENV:-/opt/peers-venv}"
OUT="${OUT:-$ROOT/runs/bench}"
THREADS="${THREADS:-1 2}"
STEPS="${STEPS:-20}"
WARMUP="${WARMUP:-5}"
MODELS="${MODELS:-all}"

if [[ ! -f "$PEER/bench.py" ]]; then
  echo "no PyTorch peer at $PEER (set PEER_DIR)" >&2
  exit 1
fi
PEERS_VENV="$VENV" bash "$PEER/setup.sh"
(cd "$ROOT" && cargo build --release --quiet)
GENZOO="${CARGO_TARGET_DIR:-$ROOT/target}/release/genzoo"

if [[ "$MODELS" == all ]]; then
  MODELS="vae-mlp,dcgan-28,ddpm-unet,gpt-char,gpt-pixel"
fi
mkdir -p "$OUT"
for t in $THREADS; do
  echo "== $t thread(s): genzoo" >&2
  : > "$OUT/genzoo-t$t.jsonl"
  # One process per model, so each peak-memory figure is that model's own.
  for m in ${MODELS//,/ }; do
    "$GENZOO" bench --model "$m" --threads "$t" --steps "$STEPS" --warmup "$WARMUP" --json \
      >> "$OUT/genzoo-t$t.jsonl"
  done
  echo "== $t thread(s): PyTorch" >&2
  "$VENV/bin/python" "$PEER/bench.py" --model "$MODELS" --threads "$t" --steps "$STEPS" \
    --warmup "$WARMUP" --json > "$OUT/pytorch-t$t.jsonl"
done
python3 "$ROOT/scripts/bench_table.py" "$OUT"/*.jsonl | tee "$OUT/table.md"
