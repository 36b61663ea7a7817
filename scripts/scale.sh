#!/usr/bin/env bash
# Scale benchmark: dev mode with N SigningKeys (1% RS256, the rest EdDSA) and M
# AuthPolicies (one file each, policy i naming key i mod N), on this machine. For each
# size it reports:
#   - first start (keys generated) to /readyz,
#   - warm start (keys exist) to /readyz,
#   - one AuthPolicy edited (its audience) to its decision changing, median of EDITS edits
#     (each edit flips the decision, measured by polling /authz of that policy),
#   - the slowest /authz answer seen while the edits are applied,
#   - RSS after warm start and after the edits.
#
#   scripts/scale.sh                         # SIZES="100:1000 1000:10000" EDITS=5
#   BIN=/path/to/authplane scripts/scale.sh  # another build, for before/after in one run
#   LAYOUT=one-file scripts/scale.sh         # every policy in one file (default: one each)
#
# Absolute numbers vary with the machine; compare builds in the same run. Talks to
# 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-"100:1000 1000:10000"}
EDITS=${EDITS:-5}
LAYOUT=${LAYOUT:-per-policy}
# A free port unless told: another server answering /readyz would be measured instead.
PORT=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin authplane
  BIN=target/release/authplane
fi

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# policy INDEX AUDIENCE: one AuthPolicy manifest.
policy() {
  printf -- '---\napiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: p%d, namespace: scale}\nspec:\n  issuers: [{signingKeyRef: {name: k%d}}]\n  audiences: [%s]\n  rollout: {mode: Enforce, percentage: 100}\n' \
    "$1" "$(($1 % keys))" "$2"
}

# start: a dev server over the folder; sets $took to the seconds until /readyz answers
# 200 (not a subshell: $server must stay set).
start() {
  local began
  began=$(now)
  RUST_LOG=warn "$BIN" dev --manifests "$work/manifests" --state "$work/state" \
    --listen "127.0.0.1:$PORT" >>"$work/server.log" 2>&1 &
  server=$!
  until curl -fs -m 5 "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || { tail -20 "$work/server.log" >&2; exit 1; }
    sleep 0.02
  done
  kill -0 "$server" 2>/dev/null || { tail -20 "$work/server.log" >&2; exit 1; }
  took=$(elapsed "$began" "$(now)")
}
stop() { kill "$server" && wait "$server" 2>/dev/null || true; server=""; }

# status_of TOKEN: the /authz status of policy p0 for the token, then its time in ms.
status_of() {
  curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}' \
    -H "Authorization: Bearer $1" "http://127.0.0.1:$PORT/authz/scale/p0"
}

printf '%-14s %10s %10s %12s %12s %9s %9s\n' "keys/policies" "first(s)" "warm(s)" "edit p50(s)" "edit max(s)" "authz max" "RSS MiB"
for size in $SIZES; do
  keys=${size%%:*}
  policies=${size##*:}
  rm -rf "$work/manifests" "$work/state"
  mkdir -p "$work/manifests"
  : >"$work/server.log"
  rsa=$(((keys + 99) / 100))
  for ((j = 0; j < keys; j++)); do
    alg=EdDSA
    [ "$j" -lt "$rsa" ] && alg=RS256
    printf -- '---\napiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata: {name: k%d, namespace: scale}\nspec: {algorithm: %s}\n' "$j" "$alg"
  done >"$work/manifests/keys.yaml"
  # p0 is the policy edited: in its own file, or last in the one file of them all.
  if [ "$LAYOUT" = one-file ]; then
    for ((i = 1; i < policies; i++)); do policy "$i" "a$i"; done >"$work/others.yaml"
    { cat "$work/others.yaml"; policy 0 a0; } >"$work/manifests/policies.yaml"
  else
    for ((i = 1; i < policies; i++)); do policy "$i" "a$i" >"$work/manifests/p$i.yaml"; done
    policy 0 a0 >"$work/manifests/p0.yaml"
  fi

  start
  first=$took
  stop
  start
  warm=$took
  rss_warm=$(rss_mib "$server")

  token=$("$BIN" token mint --state "$work/state" --key scale/k0 --sub alice --aud a0 --ttl 1h 2>/dev/null)
  read -r code _ <<<"$(status_of "$token")"
  [ "$code" = 200 ] || { echo "the token is refused before any edit ($code)" >&2; exit 1; }

  # Each edit flips p0's audience between one the token has and one it has not.
  edits=()
  slowest=0
  for ((e = 1; e <= EDITS; e++)); do
    if [ $((e % 2)) = 1 ]; then audience=other want=401; else audience=a0 want=200; fi
    began=$(now)
    if [ "$LAYOUT" = one-file ]; then
      { cat "$work/others.yaml"; policy 0 "$audience"; } >"$work/policies.yaml.tmp"
      mv "$work/policies.yaml.tmp" "$work/manifests/policies.yaml"
    else
      policy 0 "$audience" >"$work/manifests/p0.yaml.tmp"
      mv "$work/manifests/p0.yaml.tmp" "$work/manifests/p0.yaml"
    fi
    while :; do
      read -r code took <<<"$(status_of "$token")"
      slowest=$(awk -v a="$slowest" -v b="$took" 'BEGIN { print (b > a) ? b : a }')
      [ "$code" = "$want" ] && break
      if [ "$(elapsed "$began" "$(now)" | cut -d. -f1)" -ge 120 ]; then
        echo "edit $e not applied within 120 s" >&2
        exit 1
      fi
    done
    edits+=("$(elapsed "$began" "$(now)")")
  done
  rss_after=$(rss_mib "$server")
  stop
  sorted=$(printf '%s\n' "${edits[@]}" | sort -n)
  median=$(echo "$sorted" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  worst=$(echo "$sorted" | tail -1)
  printf '%-14s %10s %10s %12s %12s %8.0fms %4s/%-4s\n' "$keys/$policies" "$first" "$warm" \
    "$median" "$worst" "$(awk -v s="$slowest" 'BEGIN { print s * 1000 }')" "$rss_warm" "$rss_after"
done
echo "(edit: write to decision change, polling /authz; dev mode waits 200 ms for a file to settle)"
