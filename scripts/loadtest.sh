#!/usr/bin/env bash
# Load test: /authz throughput and latency against raw RS256 verification, on this machine,
# in one run. The server and the raw baseline get the same single core; the load generator
# gets the other one, so that the numbers do not measure their fight.
#
#   scripts/loadtest.sh            # DURATION=10 CONNECTIONS=32 by default
#
# Prints the raw numbers and the ratio. Talks to 127.0.0.1 only; stops by itself.
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

cargo build --release --quiet --bin authplane --example verify_rate
bin=target/release/authplane

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/manifests"
cat > "$work/manifests/bench.yaml" <<'YAML'
apiVersion: authplane.io/v1alpha1
kind: SigningKey
metadata: {name: web, namespace: bench}
spec: {algorithm: RS256}
---
apiVersion: authplane.io/v1alpha1
kind: AuthPolicy
metadata: {name: api, namespace: bench}
spec:
  issuers: [{signingKeyRef: {name: web}}]
  audiences: [api]
  forwardClaims: {sub: X-Auth-Subject}
  rollout: {mode: Enforce, percentage: 100}
YAML

RUST_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2} taskset -c "$SERVER_CPU" "$bin" dev --manifests "$work/manifests" --state "$work/state" \
  --listen "127.0.0.1:$PORT" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }

token=$("$bin" token mint --state "$work/state" --key bench/web --sub alice --aud api --ttl 1h)
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/authz/bench/api")
[ "$status" = 200 ] || { echo "the benchmark token is refused ($status)" >&2; exit 1; }

raw=$(taskset -c "$SERVER_CPU" target/release/examples/verify_rate "$DURATION" | awk '{print $2}')

taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
  -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/authz/bench/api" >"$work/wrk.txt"
rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
# The HTTP floor: the same server, connections and core, a handler that does nothing.
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PORT/healthz" >"$work/floor.txt"
floor=$(awk '/^Requests\/sec:/ {print $2}' "$work/floor.txt")
p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$work/wrk.txt")

echo "raw RS256 verifications/s (1 core):     $raw"
echo "/authz requests/s (server on 1 core):   $rps   ($CONNECTIONS connections, ${DURATION}s)"
echo "/authz p99 latency:                     $p99"
echo "non-2xx responses:                      ${errors:-0}"
echo "HTTP floor, /healthz requests/s:         $floor"
awk -v a="$rps" -v f="$floor" -v b="$raw" 'BEGIN {
  printf "time per /authz request: %.1f us = HTTP %.1f us + decision %.1f us (raw verify %.1f us)\n",
    1e6 / a, 1e6 / f, 1e6 / a - 1e6 / f, 1e6 / b }'
awk -v a="$rps" -v b="$raw" 'BEGIN { printf "ratio /authz : raw verify:             %.2f\n", a / b }'
