#!/usr/bin/env bash
# The migration plan's load test (issue 24): USERS concurrent users (default 10,000), each
# logs in (token exchange at POST /auth/web/token), makes DECISIONS decisions through
# /authz/shop/payments with its access token (a policy enforcing on that issuer), refreshes,
# and logs out (POST /auth/web/revoke with its refresh token). Twice:
#
#   embedded  one dev replica, the embedded store (tokens.redb in its state folder);
#   redis     two dev replicas of the same folder, one Redis (AOF, appendfsync always,
#             noeviction: the settings the README recommends), each request to the next
#             replica in turn, as behind one Service.
#
# The servers (and Redis) are pinned to SERVER_CPU, one tokio worker each; the load
# generator (examples/loadtest_plan.rs, one thread) to LOAD_CPU. Requests share
# CONNECTIONS keep-alive connections per replica (default 64), as a gateway's pool would.
# Prints, per run, the table of examples/loadtest_plan.rs (requests, errors, p50/p99 per
# step), the peak RSS (VmHWM) of each authplane and of Redis, and what the logouts left:
# ended sessions kept in the token store (per replica, and the Redis log), and Revocation
# files in the manifests folder (none: logouts with a token store write none).
#
#   scripts/loadtest-plan.sh                       # both runs, USERS=10000 DECISIONS=20
#   RUNS=redis USERS=1000 scripts/loadtest-plan.sh # one run, fewer users
#   BIN=/path/to/authplane scripts/loadtest-plan.sh
#   LOGOUT=0 scripts/loadtest-plan.sh              # no logouts: what they cost
#   THINK_MS=3000 scripts/loadtest-plan.sh         # each user waits ~3 s before each request
#                                                  # (Locust's wait_time): not flat out
#
# Rate limits: the token endpoint's and /revoke's per-address budgets count failed
# requests only, and each session refreshes once, so the defaults stand (the table's
# error column would show any 429). Not a timed test: nothing here asserts a duration.
# Talks to 127.0.0.1 only; stops everything it started at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-10000}
DECISIONS=${DECISIONS:-20}
CONNECTIONS=${CONNECTIONS:-64}
RUNS=${RUNS:-embedded redis}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=${PORT:-18100}
REDIS_PORT=${REDIS_PORT:-18379}

export CARGO_INCREMENTAL=0
if [ -z "${BIN:-}" ]; then
  nice -n 19 cargo build --release --locked --quiet --bin authplane
fi
nice -n 19 cargo build --release --locked --quiet --example loadtest_plan
bin=$(realpath "${BIN:-target/release/authplane}")
loadgen=$(realpath target/release/examples/loadtest_plan)

pids=()
work=$(mktemp -d)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

manifests() {
  mkdir -p "$1"
  cat > "$1/plan.yaml" <<'YAML'
apiVersion: authplane.io/v1alpha1
kind: SigningKey
metadata: {name: web, namespace: auth}
spec: {algorithm: RS256}
---
apiVersion: authplane.io/v1alpha1
kind: TokenClient
metadata: {name: web, namespace: auth}
spec:
  signingKeyRef: {name: web}
  audiences: [payments]
  allowedClaims: [roles]
  refreshTokens: {absoluteLifetime: 2h, idleLifetime: 1h, reuseGrace: 30s}
---
apiVersion: authplane.io/v1alpha1
kind: AuthPolicy
metadata: {name: payments, namespace: shop}
spec:
  issuers: [{signingKeyRef: {name: web, namespace: auth}}]
  audiences: [payments]
  tokenSources:
    headers: [{name: Authorization, prefix: "Bearer "}]
  requiredClaims: [{claim: roles, contains: payments}]
  forwardClaims: {sub: X-Auth-Subject}
  rollout: {mode: Enforce, percentage: 100}
YAML
}

# start_replica DIR PORT [ARGS...]: a dev replica of DIR on the server core; returns its
# pid in $started once it is ready.
start_replica() {
  local dir=$1 port=$2
  shift 2
  RUST_LOG=warn TOKIO_WORKER_THREADS=1 taskset -c "$SERVER_CPU" "$bin" dev \
    --manifests "$dir/manifests" --state "$dir/state" --listen "127.0.0.1:$port" \
    --external-url "http://127.0.0.1:$PORT" "$@" >"$dir/replica-$port.log" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 300); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  cat "$dir/replica-$port.log" >&2
  echo "replica on $port did not become ready" >&2
  exit 1
}

# store_latency SERVER...: each replica's token store operations by latency bucket
# (authplane_token_store_seconds), cumulative counts at 3.2, 12.8, 25.6, 51.2, 102.4 ms and
# all (the histogram's bounds):
# where a refresh's tail comes from.
store_latency() {
  local server
  for server in "$@"; do
    curl -fs "$server/metrics" | awk -v server="$server" '
      /^authplane_token_store_seconds_bucket/ {
        match($0, /operation="[a-z]+"/); op = substr($0, RSTART + 11, RLENGTH - 12)
        match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5)
        if (le == "0.0032" || le == "0.0128" || le == "0.0256" || le == "0.0512" || le == "0.1024" || le == "+Inf")
          counts[op] = counts[op] " " le "=" $NF
      }
      END { for (op in counts) printf "%s store %s:%s\n", server, op, counts[op] }'
  done
}

peak_rss() { awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$1/status"; }

# revocations_left DIR SERVER...: what the logouts left. With a token store (always, in
# these runs) they are kept in the store, not as Revocation files: the files left in the
# manifests folder (0 expected), the ended sessions each replica holds, and in Redis the
# log's length and memory.
revocations_left() {
  local dir=$1 count server key
  shift
  count=$(find "$dir/manifests" -name '*.yaml' ! -name plan.yaml | wc -l)
  echo "Revocation files in the manifests folder: $count ($(du -sh "$dir/manifests" | cut -f1))"
  for server in "$@"; do
    echo "$server: $(curl -s "$server/metrics" | awk '/^authplane_session_revocations / {print $2}') ended sessions held"
  done
  if [ -n "$redis_pid" ]; then
    for key in $(redis-cli -p "$REDIS_PORT" --scan --pattern 'authplane:*ended'); do
      echo "Redis $key: $(redis-cli -p "$REDIS_PORT" xlen "$key") entries, $(redis-cli -p "$REDIS_PORT" memory usage "$key") bytes"
    done
  fi
}

for run in $RUNS; do
  dir="$work/$run"
  manifests "$dir/manifests"
  secret=$("$bin" token client-secret auth/web --state "$dir/state")
  servers=()
  redis_pid=""
  case $run in
    embedded)
      start_replica "$dir" "$PORT"
      servers=("http://127.0.0.1:$PORT")
      ;;
    redis)
      mkdir -p "$dir/redis"
      taskset -c "$SERVER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --dir "$dir/redis" --save "" --appendonly yes --appendfsync always \
        --maxmemory-policy noeviction --daemonize no >"$dir/redis.log" 2>&1 &
      redis_pid=$!
      pids+=("$redis_pid")
      for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.1
      done
      start_replica "$dir" "$PORT" --token-store "redis://127.0.0.1:$REDIS_PORT/0"
      start_replica "$dir" "$((PORT + 1))" --token-store "redis://127.0.0.1:$REDIS_PORT/0"
      servers=("http://127.0.0.1:$PORT" "http://127.0.0.1:$((PORT + 1))")
      ;;
    *) echo "unknown run $run (embedded, redis)" >&2; exit 1 ;;
  esac
  replicas=("${pids[@]: -${#servers[@]}}")
  echo
  echo "== $run: ${#servers[@]} replica(s), $USERS users, $DECISIONS decisions each, $CONNECTIONS connections per replica, think time ${THINK_MS:-0} ms"
  status=0
  SERVERS=$(IFS=,; echo "${servers[*]}") SECRET=$secret USERS=$USERS DECISIONS=$DECISIONS \
    CONNECTIONS=$CONNECTIONS LOGOUT=${LOGOUT:-1} THINK_MS=${THINK_MS:-0} taskset -c "$LOAD_CPU" "$loadgen" || status=$?
  for pid in "${replicas[@]}"; do echo "authplane (pid $pid) peak RSS: $(peak_rss "$pid")"; done
  if [ -n "$redis_pid" ]; then
    echo "redis-server peak RSS: $(peak_rss "$redis_pid"), used_memory after the run: $(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r')"
  fi
  revocations_left "$dir" "${servers[@]}"
  store_latency "${servers[@]}"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  pids=()
  [ "$status" = 0 ] || { echo "$run: requests failed" >&2; exit "$status"; }
done
