#!/usr/bin/env bash
# genzoo against the PyTorch CPU peer on the five reference models.
#
# Sets up the peer (shared/peers/pytorch/setup.sh: a venv with torch, about
# 5 GB and a minute from PyPI), then, for each thread count and model, runs
# `genzoo bench` and the peer's bench.py one after the other (never at once:
# they would share the cores) and prints the genzoo/PyTorch speed ratios.
# Not part of CI: one round takes 10-20 minutes on a 2-core machine.
#
#   scripts/compare-pytorch.sh                     # threads 1 and 2, 20 timed steps
#   THREADS="2" STEPS=10 WARMUP=3 scripts/compare-pytorch.sh
#   MODELS=vae-mlp,dcgan-28 scripts/compare-pytorch.sh
#   ROUNDS=3 THREADS=2 scripts/compare-pytorch.sh  # a shared or virtual machine
#
# The two frameworks alternate model by model, so each pair of figures is
# taken minutes apart at most. On a machine whose speed drifts (a cloud VM
# with busy neighbours: one seen here ran the same binary's dcgan-28 step in
# 0.48 s and, 40 minutes later, 0.80 s), ROUNDS=N repeats the whole
# alternation N times; the table then gives each speed's median over the
# rounds and the median of the rounds' own ratios, with their range.
#
# Raw records (one JSON object per line, the same keys on both sides, tagged
# with their round) are kept in $OUT (default runs/bench);
# scripts/bench_table.py re-prints the table.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER="${PEER_DIR:-$ROOT/../shared/peers/pytorch}"
VENV="${PEERS_VENV:-/opt/peers-venv}"
OUT="${OUT:-$ROOT/runs/bench}"
THREADS="${THREADS:-1 2}"
STEPS="${STEPS:-20}"
WARMUP="${WARMUP:-5}"
MODELS="${MODELS:-all}"
ROUNDS="${ROUNDS:-1}"

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
  : > "$OUT/genzoo-t$t.jsonl"
  : > "$OUT/pytorch-t$t.jsonl"
done
# Tags each JSON line with its round, so the table pairs figures of one round.
tag() { sed -e "/^{/s/^{/{\"round\":$1,/"; }
for ((round = 1; round <= ROUNDS; round++)); do
  for t in $THREADS; do
    # One process per model, so each peak-memory figure is that model's own.
    for m in ${MODELS//,/ }; do
      echo "== round $round/$ROUNDS, $t thread(s), $m: genzoo, then PyTorch" >&2
      "$GENZOO" bench --model "$m" --threads "$t" --steps "$STEPS" --warmup "$WARMUP" --json \
        | tag "$round" >> "$OUT/genzoo-t$t.jsonl"
      "$VENV/bin/python" "$PEER/bench.py" --model "$m" --threads "$t" --steps "$STEPS" \
        --warmup "$WARMUP" --json | tag "$round" >> "$OUT/pytorch-t$t.jsonl"
    done
  done
done
python3 "$ROOT/scripts/bench_table.py" "$OUT"/*.jsonl | tee "$OUT/table.md"
