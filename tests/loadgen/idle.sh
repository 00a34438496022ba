#!/usr/bin/env bash
# Idle-connection scenario across several pgws processes sharing one port (SO_REUSEPORT), the
# multi-host shape on one machine: a process may hold at most ~19.5k sockets here.
#
#   DATABASE_URL=… tests/loadgen/idle.sh <connections> <server processes> <hold seconds>
#
# Prints the servers' RSS before, at peak while every connection is held, and per connection.
set -euo pipefail
conns=${1:?connections}; procs=${2:?server processes}; hold=${3:?hold seconds}
: "${DATABASE_URL:?set DATABASE_URL}"
bin="${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}/release"
port=${PORT:-18090}
ulimit -n 20000
pids=()
for _ in $(seq "$procs"); do
  PGWS_LOG=warn "$bin/pgws" --database-url "$DATABASE_URL" --insecure-tenant-param \
    --listen "127.0.0.1:$port" --ping-secs 3600 >/dev/null 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
sleep 2
rss() { ps -o rss= -p "$(IFS=,; echo "${pids[*]}")" | awk '{s+=$1} END {print s}'; }
before=$(rss)
gens=$(( (conns + 15999) / 16000 ))
per=$(( conns / gens ))
gen_pids=()
for g in $(seq 0 $((gens - 1))); do
  "$bin/loadgen" --ws "ws://127.0.0.1:$port/ws" --database-url "$DATABASE_URL" --clients "$per" \
    --tenants 100 --rate 0 --seconds "$hold" --source-addrs 1 --source-offset "$g" --json \
    > "/tmp/pgws-idle-gen-$g.json" &
  gen_pids+=($!)
done
peak=0
while kill -0 "${gen_pids[@]}" 2>/dev/null; do
  now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
  sleep 2
done
wait "${gen_pids[@]}"
echo "connections held:            $((per * gens)) over $procs pgws processes, $hold s"
echo "server RSS before:           $((before / 1024)) MiB"
echo "server RSS peak (all procs): $((peak / 1024)) MiB"
echo "per connection:              $(( (peak - before) * 1024 / (per * gens) )) bytes"
for p in "${pids[@]}"; do
  echo "  process $p RSS now: $(( $(ps -o rss= -p "$p") / 1024 )) MiB"
done
