#!/usr/bin/env bash
# Data-parallel scaling on one machine with several GPUs: trains each model
# for a fixed number of steps on 1, 2, 4 and 8 devices and prints a table of
# throughput and speed-up over one device.
#
# Weak scaling: every device keeps the preset's batch, so the global batch
# grows with the devices (`--batch-size` = preset batch × devices). The
# figure per run is the steady-state rate of the last logged window
# (`steps_per_sec` in metrics.jsonl), after kernel compilation and warm-up.
#
# Usage:
#   scripts/gpu-scaling.sh [--backend cuda|wgpu] [--devices "1 2 4 8"]
#       [--models "vae-mlp dcgan-28 ddpm-unet"] [--steps 60]
#       [--dataset mnist] [--data-dir DIR] [--genzoo PATH] [--out DIR]
#
# Needs a genzoo built with the backend's feature, for example
#   cargo build --release --features cuda
# Device counts beyond the machine's GPUs fail with an error naming the
# missing device, and are reported as "failed".
set -euo pipefail

backend=cuda
device_counts="1 2 4 8"
models="vae-mlp dcgan-28 ddpm-unet"
steps=60
dataset=mnist
data_dir=""
genzoo="$(dirname "$0")/../target/release/genzoo"
out="$(mktemp -d -t genzoo-scaling-XXXXXX)"

while [ $# -gt 0 ]; do
    case "$1" in
        --backend) backend="$2"; shift 2 ;;
        --devices) device_counts="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --dataset) dataset="$2"; shift 2 ;;
        --data-dir) data_dir="$2"; shift 2 ;;
        --genzoo) genzoo="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

[ -x "$genzoo" ] || { echo "no genzoo binary at $genzoo (build it, or pass --genzoo)" >&2; exit 2; }
mkdir -p "$out"
log_every=$(( steps / 4 > 0 ? steps / 4 : 1 ))

# The reference batch of each preset (shared/reference-models.md).
preset_batch() {
    case "$1" in
        *gan*) echo 64 ;;
        gpt-*) echo 12 ;;
        *) echo 128 ;;
    esac
}

printf '| model | devices | global batch | steps/s | examples/s | speed-up | efficiency |\n'
printf '|---|---:|---:|---:|---:|---:|---:|\n'
for model in $models; do
    batch=$(preset_batch "$model")
    base=""
    for n in $device_counts; do
        run="$out/$model-$n"
        rm -rf "$run"
        args=(train "$model" --backend "$backend" --devices "$n" --batch-size $(( batch * n ))
              --steps "$steps" --log-every "$log_every" --eval-every 1000000000 --out "$run"
              --dataset "$dataset")
        [ -n "$data_dir" ] && args+=(--data-dir "$data_dir")
        if ! "$genzoo" "${args[@]}" > "$run.log" 2>&1; then
            printf '| %s | %d | %d | failed: %s | | | |\n' "$model" "$n" $(( batch * n )) \
                "$(grep -m1 '^error' "$run.log" | cut -c1-80)"
            continue
        fi
        rate=$(grep -o '"steps_per_sec":[0-9.e+-]*' "$run/metrics.jsonl" | tail -1 | cut -d: -f2)
        examples=$(awk -v r="$rate" -v b=$(( batch * n )) 'BEGIN { printf "%.1f", r * b }')
        [ -n "$base" ] || base="$examples"
        speedup=$(awk -v e="$examples" -v b="$base" 'BEGIN { printf "%.2f", e / b }')
        efficiency=$(awk -v s="$speedup" -v n="$n" 'BEGIN { printf "%.0f%%", 100 * s / n }')
        printf '| %s | %d | %d | %.2f | %s | %s× | %s |\n' "$model" "$n" $(( batch * n )) "$rate" \
            "$examples" "$speedup" "$efficiency"
    done
done
echo "runs and logs: $out" >&2
