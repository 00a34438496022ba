#!/bin/sh
# Builds {{name}}.wasm with componentize-qjs (installed from npm on first build). --sync: the plain
# component ABI pgws calls; --stub-wasi: the component imports nothing but the pgws WIT.
set -eu
cd "$(dirname "$0")"
[ -x node_modules/.bin/componentize-qjs ] || npm install --silent --no-audit --no-fund
node_modules/.bin/componentize-qjs --wit wit --world filter --js guest.js -o {{name}}.wasm \
  --sync --stub-wasi >/dev/null
echo "built {{name}}.wasm"
