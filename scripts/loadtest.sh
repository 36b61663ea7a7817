#!/usr/bin/env bash
# Load test: /authz throughput and latency against raw RS256 verification, on this machine,
# in one run: with the verified-token cache off (every request checks the signature) and
# on (the same token repeated), a forged token (bad signature, refused), plus the HTTP
# floor (/healthz). The server (one tokio
# worker) and the raw baseline get the same single core; the load generator gets the
# other one, so that the numbers do not measure their fight.
#
#   scripts/loadtest.sh            # DURATION=10 CONNECTIONS=32 TOKIO_WORKER_THREADS=1
#   BIN=/path/to/authplane scripts/loadtest.sh   # another build, for before/after
#
# Prints the raw numbers, p99s and the ratios. Talks to 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18091}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)" >&2
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

cargo build --release --quiet --example verify_rate
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin authplane
fi
bin=${BIN:-target/release/authplane}

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh

# measure PORT NAME [TOKEN]: wrk against /authz with the same token on every request;
# each one must pass.
measure() {
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -H "Authorization: Bearer ${3:-$token}" "http://127.0.0.1:$1/authz/bench/api" >"$work/$2.txt"
  if grep -q 'Non-2xx' "$work/$2.txt"; then cat "$work/$2.txt" >&2; echo "$2: refused requests" >&2; exit 1; fi
}
# measure_refused PORT NAME TOKEN: the same, each request must be refused.
measure_refused() {
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -H "Authorization: Bearer $3" "http://127.0.0.1:$1/authz/bench/api" >"$work/$2.txt"
  total=$(awk '/requests in/ {print $1}' "$work/$2.txt")
  refused=$(awk '/Non-2xx/ {print $NF}' "$work/$2.txt")
  if [ "$total" != "$refused" ]; then cat "$work/$2.txt" >&2; echo "$2: requests passed" >&2; exit 1; fi
}
rps_of() { awk '/^Requests\/sec:/ {print $2}' "$work/$1.txt"; }
p99_of() { awk '$1 == "99%" {print $2}' "$work/$1.txt"; }
p50_of() { awk '$1 == "50%" {print $2}' "$work/$1.txt"; }

# Uncached: --decision-cache-size 0, every request verifies the signature.
start_server "$PORT" --decision-cache-size 0
token=$("$bin" token mint --state "$work/state" --key bench/web --sub alice --aud api --ttl 1h)
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/authz/bench/api")
[ "$status" = 200 ] || { echo "the benchmark token is refused ($status)" >&2; exit 1; }
measure "$PORT" uncached
# An attacker's forged token must not cost the server more than a user's valid one. The
# last character of an RS256 signature carries 2 bits: A, Q, g or w.
forged="${token%?}$([ "${token: -1}" = A ] && echo Q || echo A)"
reason=$(curl -s -o /dev/null -w '%{http_code} %header{x-authplane-reason}' -H "Authorization: Bearer $forged" "http://127.0.0.1:$PORT/authz/bench/api")
[ "$reason" = "401 bad_signature" ] || { echo "the forged token is not refused for its signature ($reason)" >&2; exit 1; }
measure_refused "$PORT" forged "$forged"
# The HTTP floor: the same server, connections and core, a handler that does nothing.
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/healthz" >"$work/floor.txt"
stop_server

# Cached (the default size): a client repeating its token skips the signature check.
start_server "$PORT" --decision-cache-size 10000
measure "$PORT" cached
stop_server

raw=$(taskset -c "$SERVER_CPU" target/release/examples/verify_rate "$DURATION" | awk '{print $2}')
uncached=$(rps_of uncached)
cached=$(rps_of cached)
forged=$(rps_of forged)
floor=$(rps_of floor)

echo "raw RS256 verifications/s (1 core, jsonwebtoken): $raw"
echo "/authz uncached requests/s (server on 1 core):     $uncached   p50 $(p50_of uncached)   p99 $(p99_of uncached)   ($CONNECTIONS connections, ${DURATION}s)"
echo "/authz cached requests/s (same token repeated):    $cached   p50 $(p50_of cached)   p99 $(p99_of cached)"
echo "/authz bad signature requests/s (refused, 401):     $forged   p50 $(p50_of forged)   p99 $(p99_of forged)"
echo "HTTP floor, /healthz requests/s:                   $floor   p50 $(p50_of floor)   p99 $(p99_of floor)"
awk -v a="$uncached" -v f="$floor" -v b="$raw" 'BEGIN {
  printf "time per uncached /authz request: %.1f us = HTTP %.1f us + decision %.1f us (raw verify %.1f us)\n",
    1e6 / a, 1e6 / f, 1e6 / a - 1e6 / f, 1e6 / b }'
awk -v a="$uncached" -v c="$cached" -v b="$raw" 'BEGIN {
  printf "ratio uncached /authz : raw verify:  %.2f   (goal >= 0.8)\n", a / b
  printf "ratio cached /authz : raw verify:    %.2f   (goal >= 3)\n", c / b }'
awk -v a="$uncached" -v c="$cached" -v f="$floor" -v b="$raw" 'BEGIN {
  printf "ratio cached /authz : /healthz:       %.2f   (goal >= 0.9)\n", c / f
  printf "ratio uncached : verify-plus-HTTP:   %.2f   (goal >= 0.9)\n", a * (1 / b + 1 / f) }'
awk -v a="$uncached" -v f="$forged" 'BEGIN {
  printf "ratio bad signature : valid uncached: %.2f   (goal >= 1)\n", f / a }'
