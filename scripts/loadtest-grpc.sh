#!/usr/bin/env bash
# gRPC `Check` (Envoy's ext_authz, --grpc-listen) against HTTP `/authz`: the same server,
# token and decision, one run, the two protocols alternated at each step. Requests/s and
# p99 at 32 and at 1,000 concurrent requests (HTTP: that many keep-alive connections, wrk;
# gRPC: that many streams over a few HTTP/2 connections as Envoy multiplexes them, h2load
# from Debian's nghttp2-client), with the verified-token cache off and on. The server (one
# tokio worker) gets one core, the load generator the other.
#
#   scripts/loadtest-grpc.sh        # DURATION=10 STREAMS_PER_CONNECTION=250
#   BIN=/path/to/authplane scripts/loadtest-grpc.sh
#
# Talks to 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
PORT=${PORT:-18094}
GRPC_PORT=${GRPC_PORT:-18095}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
# authplane advertises 256 streams per connection; Envoy opens another beyond that.
STREAMS_PER_CONNECTION=${STREAMS_PER_CONNECTION:-250}

for tool in wrk h2load; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian: wrk, nghttp2-client)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin authplane
fi
bin=${BIN:-target/release/authplane}

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh

results=()
# http NAME CONCURRENCY: wrk on /authz, every request must pass.
http() {
  taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"${DURATION}s" --latency \
    -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/authz/bench/api" >"$work/$1.txt"
  if grep -q 'Non-2xx\|Socket errors' "$work/$1.txt"; then cat "$work/$1.txt" >&2; exit 1; fi
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/$1.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/$1.txt")
  results+=("$(printf '%-28s %8s req/s   p99 %s' "$1" "$rps" "$p99")")
}
# grpc NAME CONCURRENCY: h2load on Check; p99 from its per-request log.
grpc() {
  local connections=$(( ($2 + STREAMS_PER_CONNECTION - 1) / STREAMS_PER_CONNECTION ))
  local streams=$(( $2 / connections ))
  taskset -c "$LOAD_CPU" h2load -t1 -c"$connections" -m"$streams" -D"$DURATION" \
    -d "$work/check.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    --log-file="$work/$1.log" \
    "http://127.0.0.1:$GRPC_PORT/envoy.service.auth.v3.Authorization/Check" >"$work/$1.txt"
  grep -q ' 0 failed, 0 errored' "$work/$1.txt" || { cat "$work/$1.txt" >&2; exit 1; }
  local rps p99
  rps=$(awk '/^finished in/ {printf "%.0f", $4}' "$work/$1.txt")
  # Log lines: start time, HTTP status, microseconds.
  p99=$(awk '{print $3}' "$work/$1.log" | sort -n | awk '{v[NR] = $1} END {printf "%.2fms", v[int(NR * 0.99)] / 1000}')
  results+=("$(printf '%-28s %8s req/s   p99 %s   (%d connections x %d streams)' "$1" "$rps" "$p99" "$connections" "$streams")")
}

for cache in 0 10000; do
  label=$([ "$cache" = 0 ] && echo uncached || echo cached)
  start_server "$PORT" --decision-cache-size "$cache" --grpc-listen "127.0.0.1:$GRPC_PORT" \
    --max-connections 1100
  token=$("$bin" token mint --state "$work/state" --key bench/web --sub alice --aud api --ttl 1h)
  check_body "$token" >"$work/check.bin"
  # The check must be allowed with the identity: OkHttpResponse with x-auth-subject: alice.
  curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @"$work/check.bin" -o "$work/answer.bin" \
    "http://127.0.0.1:$GRPC_PORT/envoy.service.auth.v3.Authorization/Check"
  grep -q alice "$work/answer.bin" || { echo "the benchmark check is not allowed" >&2; exit 1; }
  for concurrency in 32 1000; do
    http "http $label c=$concurrency" "$concurrency"
    grpc "grpc $label c=$concurrency" "$concurrency"
  done
  stop_server
done
printf '%s\n' "${results[@]}"
