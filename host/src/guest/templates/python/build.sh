#!/bin/sh
# Builds {{name}}.wasm with componentize-py. --stub-wasi: the component imports nothing but the
# pgws WIT.
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null; then
  echo "componentize-py is missing: python3 -m pip install componentize-py==0.25.1" >&2
  exit 1
fi
componentize-py -q -d wit -w filter componentize --stub-wasi guest -o {{name}}.wasm
echo "built {{name}}.wasm"
