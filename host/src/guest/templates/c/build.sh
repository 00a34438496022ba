#!/bin/sh
# Builds {{name}}.wasm: bindings from `wit-bindgen c`, compiled with clang for wasm32-wasi against
# wasi-libc, wrapped into a component by `wasm-tools component new`.
# Needs (Debian): clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32;
#       (cargo): cargo install wit-bindgen-cli@0.46.0 wasm-tools@1.245.1
set -eu
cd "$(dirname "$0")"
cc="${CC:-clang-14}"
for tool in "$cc" wit-bindgen wasm-tools; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (see the top of build.sh)" >&2; exit 1; }
done
mkdir -p gen
wit-bindgen c wit --world filter --out-dir gen >/dev/null
"$cc" --target=wasm32-wasi -O2 -mexec-model=reactor -Wall -Werror -I gen \
  -o gen/{{crate}}.core.wasm guest.c gen/filter.c gen/filter_component_type.o
wasm-tools component new gen/{{crate}}.core.wasm -o {{name}}.wasm
echo "built {{name}}.wasm"
