#!/usr/bin/env bash
# Builds the C example guests into $1: bindings from `wit-bindgen c`, compiled with clang for
# wasm32-wasi against wasi-libc, wrapped into a component with `wasm-tools component new`. The guests
# use no WASI calls (only memory allocation), so the component imports nothing but the pgws WIT.
# Needs (Debian): clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32; (cargo): wit-bindgen-cli, wasm-tools.
set -euo pipefail
out="$(realpath -m "$1")"; here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
export PATH="$PATH:/var/cache/pgws/tools/bin:$HOME/.cargo/bin"
gen="$out/.gen"
mkdir -p "$gen"
if [ ! "$gen/filter.h" -nt "$here/../../wit/pgws.wit" ]; then
  wit-bindgen c "$here/../../wit" --world filter --out-dir "$gen" >/dev/null
fi
for g in passthrough validator reshaper router; do
  if [ "$out/$g.wasm" -nt "$here/$g/guest.c" ] && [ "$out/$g.wasm" -nt "$here/json.h" ] \
     && [ "$out/$g.wasm" -nt "$gen/filter.h" ]; then continue; fi
  clang-14 --target=wasm32-wasi -O2 -mexec-model=reactor -Wall -Werror \
    -I "$gen" -I "$here" -o "$gen/$g.core.wasm" \
    "$here/$g/guest.c" "$gen/filter.c" "$gen/filter_component_type.o"
  wasm-tools component new "$gen/$g.core.wasm" -o "$out/$g.wasm"
done
