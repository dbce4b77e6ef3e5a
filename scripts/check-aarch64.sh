#!/usr/bin/env bash
# genzoo on aarch64 Linux, from an x86-64 Linux machine: cross-compiles,
# runs genzoo-core's tests (the CPU kernels among them) under QEMU, then
# trains vae-mlp, dcgan-28, ddpm-unet and gpt-char briefly with the aarch64
# and the native binary and checks that both log the same held-out figures
# (dcgan-28's are reported: see `runs` below).
# Not part of CI: about 35 minutes on 2 cores the first time (15 of them the
# build), 20 after; the emulated dcgan-28 and ddpm-unet take 8 and 5.
#
#   scripts/check-aarch64.sh
#   DATA_DIR=/path/to/mnist-format/files TEXT=input.txt scripts/check-aarch64.sh
#
# Needs: rustup, and on Debian/Ubuntu
#   apt-get install gcc-aarch64-linux-gnu qemu-user
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET=aarch64-unknown-linux-gnu
TARGET_DIR="${TARGET_DIR:-$ROOT/target/aarch64-cross}"
DATA_DIR="${DATA_DIR:-/usr/share/datasets/fashion-mnist}"
TEXT="${TEXT:-$ROOT/../shared/data/tinyshakespeare.txt}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  if ! command -v "$tool" > /dev/null; then
    echo "$tool not found: apt-get install gcc-aarch64-linux-gnu qemu-user" >&2
    exit 1
  fi
done
for input in "$DATA_DIR" "$TEXT"; do
  if [[ ! -e "$input" ]]; then
    echo "$input not found (set DATA_DIR to MNIST-format files, TEXT to a text file)" >&2
    exit 1
  fi
done
rustup target add "$TARGET"

export CARGO_TARGET_DIR="$TARGET_DIR"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cd "$ROOT"
cargo test --release --target "$TARGET" -p genzoo-core
cargo build --release --target "$TARGET" --bin genzoo
unset CARGO_TARGET_DIR
cargo build --release --bin genzoo

arm=(qemu-aarch64 -L /usr/aarch64-linux-gnu "$TARGET_DIR/$TARGET/release/genzoo")
native=("$ROOT/target/release/genzoo")
head -c 20000 "$TEXT" > "$WORK/text.txt"
# Held-out loss on 4 batches, not 200, and grids of 4 samples: emulated,
# each batch costs ~1 s.
printf '[train]\neval_batches = 4\nsamples = 4\n' > "$WORK/quick.toml"
# A run marked "~" is compared and reported but need not match: a GAN's
# adversarial updates amplify the last-bit differences of the two builds'
# GEMM kernels (which add in another order on NEON), from 2e-5 in the
# generator's loss after one step to 2e-3 after ten.
runs=(
  "vae-mlp --dataset idx:$DATA_DIR --limit 2000 --steps 100"
  "~ dcgan-28 --dataset idx:$DATA_DIR --limit 256 --config $WORK/quick.toml --steps 10"
  "ddpm-unet --dataset idx:$DATA_DIR --limit 32 --batch-size 16 --config $WORK/quick.toml --steps 2"
  "gpt-char --text $WORK/text.txt --config $WORK/quick.toml --steps 10"
)
status=0
for run in "${runs[@]}"; do
  required=true
  if [[ "$run" == "~ "* ]]; then
    required=false
    run="${run#\~ }"
  fi
  read -r -a args <<< "$run"
  for build in native arm; do
    if [[ "$build" == arm ]]; then binary=("${arm[@]}"); else binary=("${native[@]}"); fi
    # The last line of held-out figures ("test: ..." or "val: ...").
    "${binary[@]}" train "${args[@]}" --out "$WORK/$build" --overwrite 2>&1 |
      grep -E '^(test|val):' | tail -1 > "$WORK/$build.txt"
  done
  same_text=true
  if [[ -f "$WORK/native/samples/final.txt" ]]; then
    cmp -s "$WORK/native/samples/final.txt" "$WORK/arm/samples/final.txt" || same_text=false
  fi
  if cmp -s "$WORK/native.txt" "$WORK/arm.txt" && [[ -s "$WORK/native.txt" ]] && $same_text; then
    echo "${args[0]}: the same on both: $(cat "$WORK/native.txt")"
  else
    echo "${args[0]}: x86-64 $(cat "$WORK/native.txt") | aarch64 $(cat "$WORK/arm.txt")" \
      "(generated text the same: $same_text)$($required || echo '; reported, need not match')" >&2
    if $required; then status=1; fi
  fi
done
exit "$status"
