#!/usr/bin/env bash
# Builds the Rust example guests into $1 (<guest>.wasm each).
set -euo pipefail
out="$(realpath -m "$1")"; here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
target="${CARGO_TARGET_DIR:-$here/target}"
cargo build --quiet --release --target wasm32-wasip2 --manifest-path "$here/Cargo.toml"
for g in passthrough validator reshaper router misbehave moderator wrongworld snippet; do
  cp "$target/wasm32-wasip2/release/$g.wasm" "$out/$g.wasm"
done
