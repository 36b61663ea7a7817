#!/usr/bin/env bash
# Connections at scale: /authz (a cached valid token) with 10,000 keep-alive connections,
# open loop. First the saturation rate (closed loop: every connection asks again as soon
# as it is answered), then a fixed rate of 50% and 90% of it, each latency measured from
# the moment its request was meant to be sent (benches/openloop), and the few-
# connections path (32 connections, closed loop) for comparison. The server runs on one
# core with one tokio worker, the load generator on the other.
#
#   scripts/loadtest-connections.sh   # CONNECTIONS=10000 DURATION=10 TOKIO_WORKER_THREADS=1
#
# BIN=path/to/authplane measures another build (for example one from before a change) with
# the same load generator; SATURATION=N loads both at 50% and 90% of the same N. The server
# and the load generator each need CONNECTIONS + 100 open files: the soft limit is raised
# to the hard one (`ulimit -n`); raise the hard limit if it is lower. Talks to 127.0.0.1
# only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-10000}
DURATION=${DURATION:-10}
FEW=${FEW:-32}
PORT=${PORT:-18092}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
# A request unanswered after this many seconds counts as a timeout (oha's default is 20 s;
# a gateway's forward-auth call usually gives up sooner).
TIMEOUT=${TIMEOUT:-2}
SATURATION_TIMEOUT=${SATURATION_TIMEOUT:-30}

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNECTIONS + 100)) ]; then
  echo "open files limit $(ulimit -n) is too low for $CONNECTIONS connections" >&2
  exit 1
fi

target=${CARGO_TARGET_DIR:-target}
# The load generator is a package of its own (see benches/openloop/Cargo.toml).
cargo build --release --quiet --manifest-path benches/openloop/Cargo.toml --target-dir "$target"
load=$target/release/openloop
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin authplane
fi
bin=${BIN:-$target/release/authplane}

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh
# The listener's connection cap (default 4096) must not be what is measured; builds from
# before the cap have no such flag.
limits=()
if "$bin" dev --help | grep -q -- --max-connections; then
  limits=(--max-connections $((CONNECTIONS + 100)))
fi
start_server "$PORT" "${limits[@]}"
token=$("$bin" token mint --state "$work/state" --key bench/web --sub alice --aud api --ttl 1h)
url="http://127.0.0.1:$PORT/authz/bench/api"
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url")
[ "$status" = 200 ] || { echo "the benchmark token is refused ($status)" >&2; exit 1; }

# run NAME CONNECTIONS RATE [TIMEOUT]: one load, its report kept; RATE 0 is closed loop.
run() {
  # Let the connections of the previous run close (TIME_WAIT is on the client side).
  sleep 2
  local before
  before=$(overflows)
  taskset -c "$LOAD_CPU" "$load" --url "$url" -H "Authorization: Bearer $token" \
    --connections "$2" --rate "$3" --duration "$DURATION" --timeout "${4:-$TIMEOUT}" >"$work/$1.txt"
  echo "== $1 ($2 connections, $( [ "$3" = 0 ] && echo "closed loop" || echo "$3 requests/s"))"
  sed '$d' "$work/$1.txt"
  echo "handshakes dropped on a full accept queue (whole machine): $(($(overflows) - before))"
}
# The kernel's count of connections dropped because a listen queue was full: each one
# costs its client a SYN retransmission (1 s, then 3 s, ...).
overflows() { nstat -az TcpExtListenOverflows 2>/dev/null | awk '$1 == "TcpExtListenOverflows" {print $2}' | grep . || echo 0; }
# field NAME KEY: KEY=VALUE from the last line of a run's report.
field() { tail -1 "$work/$1.txt" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }

run few "$FEW" 0
# Capacity: a closed loop with a timeout long enough that no connection gives up (a
# timed-out client reconnects, and under overload the reconnections would be measured
# instead of the server). Its p50 against its p99 shows how evenly the connections are
# served: by Little's law each waits CONNECTIONS / rate on average.
run saturation "$CONNECTIONS" 0 "$SATURATION_TIMEOUT"
# SATURATION=N runs 50% and 90% of N instead of the rate just measured: the same load for
# two builds.
saturation=${SATURATION:-$(field saturation rate)}
half=$((saturation / 2))
ninety=$((saturation * 9 / 10))
run half "$CONNECTIONS" "$half"
run ninety "$CONNECTIONS" "$ninety"

echo
echo "server: $bin, 1 core; $CONNECTIONS connections; ${DURATION}s per run; timeout ${TIMEOUT}s (closed loop ${SATURATION_TIMEOUT}s)"
printf '%-28s %10s %9s %9s %9s %9s\n' load "answered/s" "p50 ms" "p99 ms" timeouts errors
for name in few saturation half ninety; do
  case $name in
    few) label="$FEW connections, closed" ;;
    saturation) label="saturation, closed" ;;
    half) label="50% ($half/s), open" ;;
    ninety) label="90% ($ninety/s), open" ;;
  esac
  printf '%-28s %10s %9s %9s %9s %9s\n' "$label" "$(field $name rate)" "$(field $name p50_ms)" \
    "$(field $name p99_ms)" "$(field $name timeouts)" "$(($(field $name errors) + $(field $name non2xx)))"
done
