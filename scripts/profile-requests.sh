#!/usr/bin/env bash
# Instructions per request on the request path, counted by valgrind's callgrind (exact and
# repeatable on a shared machine, unlike wall-clock figures): /healthz, /authz with every
# token verified (--decision-cache-size 0) and /authz with the token cached; with a build
# that has --grpc-listen and h2load installed, the same two for gRPC Check (32 streams on
# one HTTP/2 connection). The server
# runs under callgrind with instrumentation off until it is ready; each phase is one wrk
# run (32 connections, closed loop) between two dumps, and its instruction count is
# divided by the requests wrk completed.
#
#   scripts/profile-requests.sh                       # the release build of this tree
#   BIN=/path/to/authplane scripts/profile-requests.sh   # another build
#
# Prints Ir per request per phase; the callgrind files stay in OUT (default: a temporary
# folder, printed) for callgrind_annotate. Talks to 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18093}
OUT=${OUT:-$(mktemp -d)}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin authplane
fi
bin=${BIN:-target/release/authplane}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh

# profiled NAME ARGS...: the dev server under callgrind, instrumentation off, until ready.
profiled() {
  local name=$1
  shift
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$SERVER_CPU" valgrind --tool=callgrind \
    --instr-atstart=no --callgrind-out-file="$OUT/$name.%p" "$bin" dev \
    --manifests "$work/manifests" --state "$work/state" --listen "127.0.0.1:$PORT" \
    "${grpc[@]}" "$@" >"$work/server-$name.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return
    sleep 0.5
  done
  cat "$work/server-$name.log" >&2
  exit 1
}

# phase NAME PATH [HEADER]: one wrk run counted on its own; prints Ir per request.
phase() {
  local name=$1 path=$2
  shift 2
  callgrind_control -z "$server" >/dev/null 2>&1
  callgrind_control -i on "$server" >/dev/null 2>&1
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$@" \
    "http://127.0.0.1:$PORT$path" >"$OUT/$name.wrk"
  callgrind_control -i off "$server" >/dev/null 2>&1
  callgrind_control --dump="$name" "$server" >/dev/null 2>&1
  if grep -q 'Non-2xx' "$OUT/$name.wrk"; then cat "$OUT/$name.wrk" >&2; exit 1; fi
  local requests ir
  requests=$(awk '/requests in/ {print $1}' "$OUT/$name.wrk")
  # The dump just written is this server's highest-numbered file.
  ir=$(awk '/^totals:/ {print $2}' "$(ls -v "$OUT"/*."$server".* | tail -1)")
  awk -v n="$name" -v r="$requests" -v i="$ir" 'BEGIN { printf "%-10s %9d requests  %8.0f Ir/request\n", n, r, i / r }'
}

# grpc_phase NAME: the same for gRPC Check (h2load, 32 streams, one connection).
grpc_phase() {
  local name=$1
  callgrind_control -z "$server" >/dev/null 2>&1
  callgrind_control -i on "$server" >/dev/null 2>&1
  taskset -c "$LOAD_CPU" h2load -t1 -c1 -m"$CONNECTIONS" -D"$DURATION" -d "$work/check.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$GRPC_PORT/envoy.service.auth.v3.Authorization/Check" >"$OUT/$name.h2load"
  callgrind_control -i off "$server" >/dev/null 2>&1
  callgrind_control --dump="$name" "$server" >/dev/null 2>&1
  grep -q ' 0 failed, 0 errored' "$OUT/$name.h2load" || { cat "$OUT/$name.h2load" >&2; exit 1; }
  local requests ir
  requests=$(awk '/^requests:/ {print $8}' "$OUT/$name.h2load")
  ir=$(awk '/^totals:/ {print $2}' "$(ls -v "$OUT"/*."$server".* | tail -1)")
  awk -v n="$name" -v r="$requests" -v i="$ir" 'BEGIN { printf "%-10s %9d requests  %8.0f Ir/request\n", n, r, i / r }'
}
# grpc_phases NAME: grpc_phase when this build serves gRPC (its check must be allowed).
grpc_phases() {
  [ ${#grpc[@]} -gt 0 ] || return 0
  check_body "$token" >"$work/check.bin"
  grpc_phase "$1"
}

GRPC_PORT=${GRPC_PORT:-$((PORT + 1))}
grpc=()
if "$bin" dev --help | grep -q -- --grpc-listen && command -v h2load >/dev/null; then
  grpc=(--grpc-listen "127.0.0.1:$GRPC_PORT")
fi

profiled uncached --decision-cache-size 0
token=$("$bin" token mint --state "$work/state" --key bench/web --sub alice --aud api --ttl 1h)
auth=(-H "Authorization: Bearer $token")
phase healthz /healthz
phase uncached /authz/bench/api "${auth[@]}"
grpc_phases grpc-uncached
stop_server

profiled cached --decision-cache-size 10000
phase cached /authz/bench/api "${auth[@]}"
grpc_phases grpc-cached
stop_server
echo "callgrind files: $OUT"
