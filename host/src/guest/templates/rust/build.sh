#!/bin/sh
# Builds {{name}}.wasm. Needs Rust with the WASI preview 2 target: rustup target add wasm32-wasip2
set -eu
cd "$(dirname "$0")"
cargo build --quiet --release --target wasm32-wasip2
# Wherever cargo builds (CARGO_TARGET_DIR, build.target-dir, or ./target).
target="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
cp "${target:-target}/wasm32-wasip2/release/{{crate}}.wasm" {{name}}.wasm
echo "built {{name}}.wasm"
