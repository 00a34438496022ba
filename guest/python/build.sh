#!/usr/bin/env bash
# Builds the Python example guests into $1 with componentize-py. --stub-wasi: the component imports
# nothing but the pgws WIT.
set -euo pipefail
out="$(realpath -m "$1")"; here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$out"
command -v componentize-py >/dev/null || python3 -m pip install --quiet componentize-py==0.25.1
cd "$here"
for g in passthrough validator reshaper router snippet; do
  # Up to date: newer than its source and the WIT.
  if [ "$out/$g.wasm" -nt "$g.py" ] && [ "$out/$g.wasm" -nt ../../wit/pgws.wit ]; then continue; fi
  componentize-py -q -d ../../wit -w filter componentize --stub-wasi "$g" -o "$out/$g.wasm"
done
