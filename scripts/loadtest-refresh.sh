#!/usr/bin/env bash
# Load test of the token service: refresh with rotation (`POST {issuer}/token`,
# grant_type=refresh_token) against raw signing of the same crate on the same core, for
# RS256 and ES256, in one run; then N concurrent refreshes of one token. USERS users
# each log in once (token exchange) and then refresh their own chain, CONNECTIONS at a
# time: every refresh returns a new refresh token and supersedes the old one, written
# to the embedded store (redb, durable) before the answer. The server (one tokio worker)
# and the raw baseline get the same single core; the load generator gets the other one.
# Also measured in the same run: the server's `/healthz` under the same wrk setup (the
# HTTP floor: no endpoint that answers over HTTP can beat 1/(1/raw + 1/floor)), the
# server's CPU time per refresh and how busy its core was (from /proc: a core below 100%
# is waiting, not computing), split between the request threads and the store's writer
# thread; the store's mean lookup and write latency per refresh (from /metrics: a
# write's includes waiting for its group's durable commit); and `/healthz` again at each
# refresh run's rate (what an HTTP exchange costs the server there). The raw baselines
# run before the server and again after it (this machine's speed drifts); each line
# shows both, and what a refresh costs besides its signature against what the goal
# leaves for it.
#
#   scripts/loadtest-refresh.sh     # DURATION=10 USERS=1000 CONNECTIONS=32
#   BIN=/path/to/authplane scripts/loadtest-refresh.sh
#
# Talks to 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
USERS=${USERS:-1000}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18096}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

command -v wrk >/dev/null || { echo "needs wrk (Debian: wrk)" >&2; exit 1; }
[ -n "${BIN:-}" ] || cargo build --release --quiet --example sign_rate
sign_rate=${CARGO_TARGET_DIR:-target}/release/examples/sign_rate
# The baselines, on the server's core (raw aws-lc-rs, jsonwebtoken, token::sign), before
# the server runs and again after it: this machine's speed drifts by several per cent
# within minutes (a shared host), so a ratio is taken against their mean and both show.
baselines() {
  taskset -c "$SERVER_CPU" "$sign_rate" "$DURATION" RS256 >"$work/sign-rs256.$1"
  taskset -c "$SERVER_CPU" "$sign_rate" "$DURATION" ES256 >"$work/sign-es256.$1"
}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin authplane
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/authplane}

# shellcheck source=scripts/bench-server.sh
. scripts/bench-server.sh
for alg in RS256 ES256; do
  name=$(echo "$alg" | tr '[:upper:]' '[:lower:]')
  cat >>"$work/manifests/bench.yaml" <<YAML
---
apiVersion: authplane.io/v1alpha1
kind: SigningKey
metadata: {name: $name, namespace: bench}
spec: {algorithm: $alg}
---
apiVersion: authplane.io/v1alpha1
kind: TokenClient
metadata: {name: $name, namespace: bench}
spec:
  signingKeyRef: {name: $name}
  audiences: [api]
YAML
done
# Rotations per session are limited (10 a minute by default): far above what one load
# generator sends, so that this measures refreshes, not the limiter.
baselines before
start_server "$PORT" --token-rate 100000000
base="http://127.0.0.1:$PORT"

# login ALG: USERS token exchanges on ALG's client; their refresh tokens, one per line.
login() {
  local name=$1 secret
  secret=$("$bin" token client-secret "bench/$name" --state "$work/state")
  python3 scripts/token-login.py "$base/bench/$name/token" "bench/$name" "$secret" "$USERS" >"$work/$name.tokens"
}

rps_of() { awk '/^Requests\/sec:/ {print $2}' "$work/$1.txt"; }
pct_of() { awk -v p="$2" '$1 == p {print $2}' "$work/$1.txt"; }
requests_of() { awk '/requests in/ {print $1}' "$work/$1.txt"; }
# The server's CPU seconds so far (every thread): user and system (the kernel's share:
# sockets, the store's file writes and syncs, wake-ups); then user + system of its
# request threads (tokio's workers: HTTP, the signature, the decisions) and of the
# store's writer thread (the transaction, its page writes and its fsync).
cpu_seconds() {
  local hz
  hz=$(getconf CLK_TCK)
  awk -v hz="$hz" '{print $14 / hz, $15 / hz}' "/proc/$server/stat" | tr '\n' ' '
  cat /proc/"$server"/task/*/stat 2>/dev/null | awk -v hz="$hz" \
    '$2 ~ /^\(tokio-rt/ { w += $14 + $15 } $2 ~ /^\(token-store/ { s += $14 + $15 }
     END { print w / hz, s / hz }'
}
# The store's counters: `<operation>_sum <seconds>` and `<operation>_count <n>` lines.
store_counters() {
  curl -fs "$base/metrics" | sed -n 's/^authplane_token_store_seconds_\(sum\|count\){operation="\([a-z]*\)"} /\2_\1 /p'
}
# measured NAME: CPU and store figures of the wrk run that just wrote $work/NAME.txt,
# from the snapshots taken before it ($work/NAME.before-*).
measured() {
  local name=$1 requests
  requests=$(requests_of "$name")
  { cat "$work/$name.before-cpu"; cpu_seconds; } | awk -v r="$requests" -v d="$DURATION" \
    'NR == 1 { u0 = $1; s0 = $2; w0 = $3; t0 = $4 } NR == 2 { u = $1 - u0; s = $2 - s0
      printf "cpu_us_per_request %.1f\nsystem_us_per_request %.1f\ncore_busy_percent %.0f\n", (u + s) / r * 1e6, s / r * 1e6, (u + s) / d * 100
      printf "workers_us_per_request %.1f\nstore_writer_us_per_request %.1f\n", ($3 - w0) / r * 1e6, ($4 - t0) / r * 1e6 }' \
    >"$work/$name.measured"
  store_counters >"$work/$name.after-store"
  awk -v r="$requests" 'NR == FNR { before[$1] = $2; next } { after[$1] = $2 }
    END { for (op in after) if (op ~ /_count$/) { o = substr(op, 1, length(op) - 6)
      n = after[op] - before[op]; if (n > 0) printf "store_%s_us %.0f\nstore_%s_per_request %.2f\n", o,
        (after[o "_sum"] - before[o "_sum"]) / n * 1e6, o, n / r } }' \
    "$work/$name.before-store" "$work/$name.after-store" >>"$work/$name.measured"
}
# With perf (and tracepoints readable): the server's durable commits (fdatasync, fsync)
# and context switches during the run, per request, counted by the kernel.
perf_start() {
  rm -f "$work/$1.perf"
  command -v perf >/dev/null || return 0
  perf stat -x, -o "$work/$1.perf" -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync,context-switches \
    -p "$server" 2>/dev/null &
  perf_pid=$!
  sleep 0.2
}
perf_stop() {
  [ -n "${perf_pid:-}" ] || return 0
  kill -INT "$perf_pid" 2>/dev/null; wait "$perf_pid" 2>/dev/null || true; perf_pid=""
  [ -s "$work/$1.perf" ] || return 0
  awk -F, -v r="$(requests_of "$1")" '$3 ~ /fdatasync|fsync/ && $1 ~ /^[0-9]+$/ { s += $1 }
    $3 == "context-switches" && $1 ~ /^[0-9]+$/ { c = $1 }
    END { printf "syncs_per_request %.3f\ncontext_switches_per_request %.2f\n", s / r, c / r }' \
    "$work/$1.perf" >>"$work/$1.measured"
}
before() { cpu_seconds >"$work/$1.before-cpu"; store_counters >"$work/$1.before-store"; perf_start "$1"; }
figure() { awk -v k="$2" '$1 == k {print $2}' "$work/$1.measured"; }

for name in rs256 es256; do
  login "$name"
  # The second half of the chains is refreshed once more by the concurrency check below.
  before "$name"
  CLIENT_ID="bench/$name" TOKEN_PATH="/bench/$name/token" taskset -c "$LOAD_CPU" \
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s scripts/refresh/refresh.lua \
    "$base" -- "$work/$name.tokens" >"$work/$name.txt"
  if grep -q 'Non-2xx' "$work/$name.txt" || ! grep -q '^chains_broken 0$' "$work/$name.txt"; then
    cat "$work/$name.txt" >&2; echo "$name: refreshes failed" >&2; exit 1
  fi
  measured "$name"
  perf_stop "$name"
done
# The HTTP floor: the same server's /healthz, same connections, same cores.
before healthz
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$base/healthz" >"$work/healthz.txt"
measured healthz
perf_stop healthz
# The HTTP floor at each refresh run's rate: /healthz with each connection waiting
# between requests so that the rate is about the refreshes'. Below saturation the load
# generator's core sleeps between answers and each answer wakes it (on a VM, an exit per
# wake-up): an HTTP exchange costs the server more than at saturation, and the refresh
# pays that price.
for name in rs256 es256; do
  delay=$(awk -v c="$CONNECTIONS" -v r="$(rps_of "$name")" 'BEGIN { printf "%d", 1000 * c / r + 0.5 }')
  before "paced-$name"
  DELAY_MS=$delay taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
    -s scripts/refresh/paced.lua "$base/healthz" >"$work/paced-$name.txt"
  measured "paced-$name"
  perf_stop "paced-$name"
done
# Two tabs and a flood: N concurrent refreshes of one user's token (a new login each).
concurrency=()
for n in 2 50; do
  USERS=1 login rs256
  concurrency+=("$(python3 scripts/refresh/concurrent.py "$base/bench/rs256/token" bench/rs256 \
    "$(cat "$work/rs256.tokens")" "$n")") || { printf '%s\n' "${concurrency[@]}" >&2; exit 1; }
done
stop_server

baselines after
# sign_of ALG WHAT [before|after]: signatures per second; without the third, the mean.
sign_of() {
  local files=("$work/sign-$1.before" "$work/sign-$1.after")
  [ -z "${3:-}" ] || files=("$work/sign-$1.$3")
  awk -v k="$2_$1_signatures_per_second" '$1 == k { s += $2; n++ } END { printf "%.0f", s / n }' "${files[@]}"
}

echo "users $USERS, $CONNECTIONS connections, ${DURATION}s per algorithm, server on 1 core; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "HTTP floor, /healthz: $(rps_of healthz)/s   p50 $(pct_of healthz 50%)   p99 $(pct_of healthz 99%)   server CPU $(figure healthz cpu_us_per_request) us/request (the kernel's part $(figure healthz system_us_per_request)), core busy $(figure healthz core_busy_percent)%"
for name in rs256 es256; do
  echo "refresh with rotation, $name: $(rps_of "$name")/s   p50 $(pct_of "$name" 50%)   p99 $(pct_of "$name" 99%)"
  echo "  server CPU $(figure "$name" cpu_us_per_request) us/refresh (the kernel's part $(figure "$name" system_us_per_request)), core busy $(figure "$name" core_busy_percent)%; store: lookup $(figure "$name" store_find_us) us, write (until durable) $(figure "$name" store_swap_us) us"
  echo "  of it: request threads $(figure "$name" workers_us_per_request) us (a raw signature: $(awk -v r="$(sign_of "$name" raw)" 'BEGIN { printf "%.1f", 1e6 / r }') us), store writer thread $(figure "$name" store_writer_us_per_request) us"
  echo "  durable commits (fsync) per refresh $(figure "$name" syncs_per_request), context switches per refresh $(figure "$name" context_switches_per_request)"
  echo "  /healthz at about this rate ($(rps_of "paced-$name")/s): server CPU $(figure "paced-$name" cpu_us_per_request) us/request"
  echo "  signing on 1 core: raw aws-lc-rs $(sign_of "$name" raw)/s (before the server $(sign_of "$name" raw before), after it $(sign_of "$name" raw after)), jsonwebtoken::encode $(sign_of "$name" jsonwebtoken)/s, token::sign $(sign_of "$name" token_sign)/s"
done
# The ceiling of an HTTP endpoint that only signs: 1 / (1/raw + 1/floor).
for alg in RS256:rs256:0.9 ES256:es256:0.8; do
  IFS=: read -r label name goal <<<"$alg"
  awk -v a="$(rps_of "$name")" -v b="$(sign_of "$name" raw)" -v e="$(sign_of "$name" jsonwebtoken)" \
    -v h="$(rps_of healthz)" -v l="$label" -v g="$goal" -v p50="$(pct_of "$name" 50%)" -v p99="$(pct_of "$name" 99%)" \
    -v cpu="$(figure "$name" cpu_us_per_request)" -v floor="$(figure "paced-$name" cpu_us_per_request)" \
    'BEGIN { c = 1 / (1 / b + 1 / h)
    printf "ratio refresh : raw signing, %s: %.2f   (goal >= %s; against jsonwebtoken::encode %.2f; p50 %s, p99 %s)\n", l, a / b, g, a / e, p50, p99
    printf "  refresh : (raw + HTTP floor), %s: %.2f   (the ceiling of signing over HTTP: %.0f/s, %.2f of raw)\n", l, a / c, c, c / b
    # What a refresh costs the core besides one raw signature, and what the goal leaves.
    printf "  besides the signature, a refresh costs the core %.0f us; the goal leaves %.0f us (an HTTP exchange at that rate alone: %.0f)\n", cpu - 1e6 / b, 1e6 / (g * b) - 1e6 / b, floor }'
done
printf '%s\n' "${concurrency[@]}"
