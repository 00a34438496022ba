#!/usr/bin/env bash
# Builds the JavaScript example guests into $1 with componentize-qjs (QuickJS). --sync: plain
# (non-async) component ABI, as the host calls guests synchronously; --stub-wasi: the component imports
# nothing but the pgws WIT.
set -euo pipefail
out="$(realpath -m "$1")"; here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
cd "$here"
[ -x node_modules/.bin/componentize-qjs ] || npm ci --silent --no-audit --no-fund
for g in passthrough validator reshaper router snippet; do
  # Up to date: newer than its source and the WIT.
  if [ "$out/$g.wasm" -nt "$g.js" ] && [ "$out/$g.wasm" -nt ../../wit/pgws.wit ]; then continue; fi
  node_modules/.bin/componentize-qjs --wit ../../wit --world filter --js "$g.js" \
    -o "$out/$g.wasm" --sync --stub-wasi >/dev/null
done
