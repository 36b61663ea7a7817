#!/usr/bin/env bash
# Instructions per refresh (`POST {issuer}/token`, grant_type=refresh_token, rotation
# written to the embedded store) under valgrind's callgrind, beside /healthz on the same
# server: exact and repeatable on a shared machine, unlike wall-clock figures. USERS users
# log in (instrumentation off), then one wrk run refreshes their chains (as in
# scripts/loadtest-refresh.sh) between two dumps; Ir per refresh counts every thread of
# the server (the tokio worker, the blocking pool's lookups, the store's writer).
#
#   scripts/profile-refresh.sh                       # ALG=ES256 USERS=1000 DURATION=5
#   BIN=/path/to/authplane scripts/profile-refresh.sh   # another build
#
# Prints Ir per request per phase; the callgrind files stay in OUT (default: a temporary
# folder, printed) for callgrind_annotate --inclusive=yes. Talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
USERS=${USERS:-1000}
ALG=${ALG:-ES256}
PORT=${PORT:-18097}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin authplane
fi
bin=${BIN:-target/release/authplane}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh
name=$(echo "$ALG" | tr '[:upper:]' '[:lower:]')
cat >>"$work/manifests/bench.yaml" <<YAML
---
apiVersion: authplane.io/v1alpha1
kind: SigningKey
metadata: {name: $name, namespace: bench}
spec: {algorithm: $ALG}
---
apiVersion: authplane.io/v1alpha1
kind: TokenClient
metadata: {name: $name, namespace: bench}
spec:
  signingKeyRef: {name: $name}
  audiences: [api]
YAML

RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$SERVER_CPU" valgrind --tool=callgrind \
  --instr-atstart=no --callgrind-out-file="$OUT/refresh.%p" "$bin" dev \
  --manifests "$work/manifests" --state "$work/state" --listen "127.0.0.1:$PORT" \
  --token-rate 100000000 >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { cat "$work/server.log" >&2; exit 1; }
base="http://127.0.0.1:$PORT"

secret=$("$bin" token client-secret "bench/$name" --state "$work/state")
python3 scripts/token-login.py "$base/bench/$name/token" "bench/$name" "$secret" "$USERS" >"$work/tokens"

# phase NAME ARGS...: one wrk run counted on its own; prints Ir per request.
phase() {
  local name=$1
  shift
  callgrind_control -z "$server" >/dev/null 2>&1
  callgrind_control -i on "$server" >/dev/null 2>&1
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 30s "$@" >"$OUT/$name.wrk"
  callgrind_control -i off "$server" >/dev/null 2>&1
  callgrind_control --dump="$name" "$server" >/dev/null 2>&1
  if grep -q 'Non-2xx' "$OUT/$name.wrk" || grep -q '^chains_broken [1-9]' "$OUT/$name.wrk"; then
    cat "$OUT/$name.wrk" >&2; exit 1
  fi
  local requests ir
  requests=$(awk '/requests in/ {print $1}' "$OUT/$name.wrk")
  # The dump just written is this server's highest-numbered file (all threads in one).
  ir=$(awk '/^totals:/ {print $2}' "$(ls -v "$OUT"/refresh."$server".* | tail -1)")
  awk -v n="$name" -v r="$requests" -v i="$ir" 'BEGIN { printf "%-10s %9d requests  %8.0f Ir/request\n", n, r, i / r }'
}

phase healthz "$base/healthz"
CLIENT_ID="bench/$name" TOKEN_PATH="/bench/$name/token" \
  phase refresh -s scripts/refresh/refresh.lua "$base" -- "$work/tokens"
stop_server
echo "callgrind files: $OUT"
