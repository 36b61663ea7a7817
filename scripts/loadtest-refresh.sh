#!/usr/bin/env bash
# Load test of the token service: refresh with rotation (`POST {issuer}/token`,
# grant_type=refresh_token) against raw signing of the same crate on the same core, for
# RS256 and ES256, in one run; then N concurrent refreshes of one token. USERS users
# each log in once (token exchange) and then refresh their own chain, CONNECTIONS at a
# time: every refresh returns a new refresh token and supersedes the old one, written
# to the embedded store (redb, durable) before the answer. The server (one tokio worker)
# and the raw baseline get the same single core; the load generator gets the other one.
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
start_server "$PORT" --token-rate 100000000
base="http://127.0.0.1:$PORT"

# login ALG: USERS token exchanges on ALG's client; their refresh tokens, one per line.
login() {
  local name=$1 secret
  secret=$("$bin" token client-secret "bench/$name" --state "$work/state")
  python3 - "$base/bench/$name/token" "bench/$name" "$secret" "$USERS" >"$work/$name.tokens" <<'PY'
import concurrent.futures, json, sys, urllib.parse, urllib.request
url, client, secret, users = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def exchange(i):
    body = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_id": client, "client_secret": secret,
        "subject_token": f"user-{i:06}",
        "subject_token_type": "urn:authplane:params:oauth:token-type:subject"}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["refresh_token"]
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for token in pool.map(exchange, range(users)):
        print(token)
PY
}

rps_of() { awk '/^Requests\/sec:/ {print $2}' "$work/$1.txt"; }
pct_of() { awk -v p="$2" '$1 == p {print $2}' "$work/$1.txt"; }

for name in rs256 es256; do
  login "$name"
  # The second half of the chains is refreshed once more by the concurrency check below.
  CLIENT_ID="bench/$name" TOKEN_PATH="/bench/$name/token" taskset -c "$LOAD_CPU" \
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s scripts/refresh/refresh.lua \
    "$base" -- "$work/$name.tokens" >"$work/$name.txt"
  if grep -q 'Non-2xx' "$work/$name.txt" || ! grep -q '^chains_broken 0$' "$work/$name.txt"; then
    cat "$work/$name.txt" >&2; echo "$name: refreshes failed" >&2; exit 1
  fi
done
# Two tabs and a flood: N concurrent refreshes of one user's token (a new login each).
concurrency=()
for n in 2 50; do
  USERS=1 login rs256
  concurrency+=("$(python3 scripts/refresh/concurrent.py "$base/bench/rs256/token" bench/rs256 \
    "$(cat "$work/rs256.tokens")" "$n")") || { printf '%s\n' "${concurrency[@]}" >&2; exit 1; }
done
stop_server

# The baselines, on the server's core: raw aws-lc-rs, jsonwebtoken, token::sign.
taskset -c "$SERVER_CPU" "${CARGO_TARGET_DIR:-target}"/release/examples/sign_rate "$DURATION" RS256 >"$work/sign-rs256.txt"
taskset -c "$SERVER_CPU" "${CARGO_TARGET_DIR:-target}"/release/examples/sign_rate "$DURATION" ES256 >"$work/sign-es256.txt"
sign_of() { awk -v k="$2_$1_signatures_per_second" '$1 == k {print $2}' "$work/sign-$1.txt"; }

echo "users $USERS, $CONNECTIONS connections, ${DURATION}s per algorithm, server on 1 core"
for name in rs256 es256; do
  echo "refresh with rotation, $name: $(rps_of "$name")/s   p50 $(pct_of "$name" 50%)   p99 $(pct_of "$name" 99%)"
  echo "  signing on 1 core: raw aws-lc-rs $(sign_of "$name" raw)/s, jsonwebtoken::encode $(sign_of "$name" jsonwebtoken)/s, token::sign $(sign_of "$name" token_sign)/s"
done
awk -v a="$(rps_of rs256)" -v b="$(sign_of rs256 raw)" -v c="$(rps_of es256)" -v d="$(sign_of es256 raw)" \
  -v e="$(sign_of rs256 jsonwebtoken)" -v f="$(sign_of es256 jsonwebtoken)" 'BEGIN {
  printf "ratio refresh : raw signing, RS256: %.2f   (goal >= 0.9; against jsonwebtoken::encode %.2f)\n", a / b, a / e
  printf "ratio refresh : raw signing, ES256: %.2f   (goal >= 0.8; against jsonwebtoken::encode %.2f)\n", c / d, c / f }'
printf '%s\n' "${concurrency[@]}"
