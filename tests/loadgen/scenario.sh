#!/usr/bin/env bash
# Runs one named scenario of BENCHMARKS.md and prints its figures: builds the release binaries, starts
# a private PostgreSQL (unless DATABASE_URL is set), starts pgws the way the scenario needs it, runs the
# load generator against it, and stops everything it started.
#
#   tests/loadgen/scenario.sh <scenario> [--json]
#   tests/loadgen/scenario.sh list
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
  cat <<'EOF'
scenarios (targets in BENCHMARKS.md):
  idle-10k        10,000 idle connections on one server: RSS per connection
  idle-50k        50,000 idle connections over 3 pgws processes on one port
  idle-100k       100,000 idle connections over 6 pgws processes, held 10 minutes (HOLD=<seconds>)
  fanout          10,000 subscribers x 100 NOTIFY/s through a passthrough guest
  moderate        1,000 subscribers over 2 tenants x 300 NOTIFY/s in transactions of 10, pgws frames
  latency-small   100 subscribers x 1,000 NOTIFY/s
  latency-mid     1,000 subscribers x 100 NOTIFY/s
  latency-large   10,000 subscribers x 10 NOTIFY/s
  ingest-single   single-NOTIFY commits as fast as 8 connections can (40,000/s asked), no clients
  ingest-batched  250,000 NOTIFY/s in 100-NOTIFY transactions, no clients
  durable-100     durable streams: 100 subscribers x 1,000 stored messages/s (single-message commits)
  durable-1000    durable streams: 1,000 subscribers x 100 stored messages/s
  durable-max     durable streams: 100 subscribers, 20,000 messages/s asked in transactions of 100
  notify-max      the same shape with plain NOTIFY, for comparison
  durable-ingest  single-message publishes over 1,000 tenants as fast as 8 connections can (40,000/s
                  asked), no clients; DOORBELL_MS=<n> quiets the doorbell (pgws.doorbell_ms)
  catch-up        100,000 stored messages replayed to one reconnecting client (CATCHUP=<n>)
  socketio-burst  50 runs of 500 socket.io clients connecting at once, each subscribing on connect:
                  every subscribe must be answered (RUNS=<n>)
  idle-socketio   5,000 idle socket.io clients (WebSocket, one subscription each): RSS per connection
  socketio-100    100 socket.io clients x 1,000 NOTIFY/s
  socketio-500    500 socket.io clients x 1,000 NOTIFY/s
  isolation-base  200 clients over tenant t0 (no guest) and t1 (fast guest) x 200 NOTIFY/s
  isolation       the same, while 4 tenants' guests take 80 ms a call and 2 loop to the deadline
                  (10 messages/s each)
  custom ARGS...  pgws (FRAME=raw|pgws) and the load generator with your arguments, e.g.
                  scenario.sh custom --clients 10 --tenants 2 --rate 300 --batch 10 --seconds 6
EOF
}

scenario=${1:-}
shift || true
case "$scenario" in
  "" | -h | --help | list) usage; exit 0 ;;
esac
extra=("$@")

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$CARGO_TARGET_DIR/release"
cargo build --quiet --release -p pgws -p pgws-loadgen
ulimit -n 20000

pids=()
pgdir=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$pgdir" ]; then
    as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  fi
}
trap cleanup EXIT

# initdb refuses to run as root: run PostgreSQL as the `postgres` user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -z "${DATABASE_URL:-}" ]; then
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pgbin/initdb" ] || { echo "no PostgreSQL server binaries; apt install postgresql or set DATABASE_URL" >&2; exit 1; }
  pgdir=$(mktemp -d /tmp/pgws-scenario-XXXXXX)
  chmod 755 "$pgdir"
  [ "$(id -u)" = 0 ] && chown postgres "$pgdir"
  as_pg "$pgbin/initdb" -D "$pgdir/data" -U postgres -A trust >/dev/null
  port=$((20000 + RANDOM % 10000))
  # Durability off: the scenarios measure pgws, not the disk.
  as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
    -o "-p $port -k $pgdir -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null
  export DATABASE_URL="host=$pgdir port=$port user=postgres dbname=postgres"
fi

port=${PORT:-18080}
# PGWS_ARGS: extra server flags for a run (e.g. PGWS_ARGS="--guest-threads 1"); PGWS_BIN: another
# pgws binary to measure (e.g. an earlier build, for before/after figures).
pgws_bin=${PGWS_BIN:-$bin/pgws}
server() {
  # shellcheck disable=SC2086
  PGWS_LOG=warn "$pgws_bin" --listen "127.0.0.1:$port" "$@" ${PGWS_ARGS:-} >/dev/null 2>${PGWS_STDERR:-/dev/null} &
  pids+=($!)
  server_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "pgws did not become ready" >&2
  exit 1
}

ws() {
  server --insecure-tenant-param --frame "${frame:-raw}" "${server_args[@]}"
  "$bin/loadgen" --ws "ws://127.0.0.1:$port/ws" --server-pid "$server_pid" \
    --metrics-addr "127.0.0.1:$port" "$@" "${extra[@]}"
}

# DOORBELL_MS=<n>: producers quiet the doorbell (pgws.doorbell_ms; -1: none, the server polls every
# 10 ms instead).
durable() {
  "$pgws_bin" --database-url "$DATABASE_URL" schema install >/dev/null
  if [ -n "${DOORBELL_MS:-}" ]; then
    psql -q "$DATABASE_URL" -c "ALTER DATABASE postgres SET pgws.doorbell_ms = ${DOORBELL_MS}" >/dev/null
    if [ "$DOORBELL_MS" -lt 0 ]; then server_args+=(--stream-poll-ms 10)
    else server_args+=(--stream-doorbell-ms "$DOORBELL_MS"); fi
  fi
  server_args=(--streams "${server_args[@]}")
  ws --durable "$@"
}

sio() {
  server --socketio-anonymous-tenant bench
  "$bin/loadgen" --protocol socketio --ws "ws://127.0.0.1:$port" --channel bench \
    --server-pid "$server_pid" --metrics-addr "127.0.0.1:$port" --producers 2 "$@" "${extra[@]}"
}

server_args=()
case "$scenario" in
  idle-10k)       ws --clients 10000 --tenants 100 --rate 0 --seconds 3 --source-addrs 8 ;;
  idle-50k)       PORT=$port tests/loadgen/idle.sh 50000 3 20 ;;
  idle-100k)      PORT=$port tests/loadgen/idle.sh 100000 6 "${HOLD:-600}" ;;
  fanout)
    guests=$(mktemp -d /tmp/pgws-scenario-guests-XXXXXX)
    guest/rust/build.sh "$guests/built" >/dev/null
    cp "$guests/built/passthrough.wasm" "$guests/_default.wasm"
    server_args=(--guests "$guests")
    ws --clients 10000 --tenants 1 --rate 100 --seconds 10 --source-addrs 8 ;;
  moderate)       frame=pgws ws --clients 1000 --tenants 2 --rate 300 --batch 10 --seconds 6 ;;
  latency-small)  ws --clients 100 --tenants 1 --rate 1000 --seconds 10 ;;
  latency-mid)    ws --clients 1000 --tenants 1 --rate 100 --seconds 10 ;;
  latency-large)  ws --clients 10000 --tenants 1 --rate 10 --seconds 10 --source-addrs 8 ;;
  ingest-single)  ws --clients 0 --rate 40000 --producers 8 --seconds 10 ;;
  ingest-batched) ws --clients 0 --rate 250000 --batch 100 --producers 4 --seconds 10 ;;
  isolation-base | isolation)
    guests=$(mktemp -d /tmp/pgws-scenario-guests-XXXXXX)
    guest/rust/build.sh "$guests/built" >/dev/null
    cp "$guests/built/passthrough.wasm" "$guests/t1.wasm"
    for s in s0 s1 s2 s3 s4 s5; do cp "$guests/built/misbehave.wasm" "$guests/$s.wasm"; done
    server_args=(--guests "$guests")
    if [ "$scenario" = isolation ]; then
      # The slow tenants' traffic, over one connection of its own: 10 messages a second each.
      (
        for k in $(seq 600); do
          echo "SELECT pg_notify('pgwebsocket', 's' || i || ',{\"do\":\"spin\",\"ms\":80,\"k\":$k}') FROM generate_series(0, 3) i;"
          echo "SELECT pg_notify('pgwebsocket', 's' || i || ',{\"do\":\"loop\",\"k\":$k}') FROM generate_series(4, 5) i;"
          sleep 0.1
        done | psql -q "$DATABASE_URL" >/dev/null 2>&1
      ) &
      pids+=($!)
    fi
    ws --clients 200 --tenants 2 --rate 200 --seconds 10 ;;
  durable-100)    durable --clients 100 --tenants 1 --rate 1000 --seconds 10 ;;
  durable-1000)   durable --clients 1000 --tenants 1 --rate 100 --seconds 10 ;;
  durable-max)    durable --clients 100 --tenants 1 --rate 20000 --batch 100 --producers 4 --seconds 10 ;;
  notify-max)     ws --clients 100 --tenants 1 --rate 20000 --batch 100 --producers 4 --seconds 10 ;;
  durable-ingest)
    durable --clients 0 --tenants 1000 --rate 40000 --producers 8 --seconds 10 ;;
  catch-up)
    n=${CATCHUP:-100000}
    "$pgws_bin" --database-url "$DATABASE_URL" schema install >/dev/null
    server --insecure-tenant-param --streams --stream-recover-max "$n" --stream-retention-count "$n"
    "$bin/loadgen" --ws "ws://127.0.0.1:$port/ws" --catch-up "$n" "${extra[@]}" ;;
  socketio-burst)
    server --socketio-anonymous-tenant bench
    unanswered=0
    for run in $(seq "${RUNS:-50}"); do
      if ! "$bin/loadgen" --protocol socketio --ws "ws://127.0.0.1:$port" --channel bench \
          --clients 500 --at-once --rate 0 --seconds 0 --source-addrs 4 >/tmp/pgws-burst.$$ 2>&1; then
        unanswered=$((unanswered + 1))
        echo "run $run: $(grep -m1 -E 'no subscribed|Error|error' /tmp/pgws-burst.$$)"
      fi
    done
    rm -f /tmp/pgws-burst.$$
    echo "runs with an unanswered subscribe: $unanswered of ${RUNS:-50} (500 clients each)" ;;
  idle-socketio)  sio --clients 5000 --rate 0 --seconds 8 --source-addrs 4 ;;
  socketio-100)   sio --clients 100 --rate 1000 --seconds 10 ;;
  socketio-500)   sio --clients 500 --rate 1000 --seconds 10 ;;
  custom)         frame=${FRAME:-raw} ws ;;
  *) echo "unknown scenario: $scenario" >&2; usage >&2; exit 2 ;;
esac
