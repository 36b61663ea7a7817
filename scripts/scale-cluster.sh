#!/usr/bin/env bash
# Scale benchmark of the operator on a real cluster: KEYS SigningKeys (ES256, over
# NAMESPACES namespaces) and POLICIES AuthPolicies (policy i names key i mod KEYS), the
# operator run as a local process against $KUBECONFIG. It reports:
#   - cold start (no Secrets yet) to /readyz 200, and /authz 503s seen after it;
#   - when every SigningKey and every AuthPolicy is Ready;
#   - apiserver writes during the cold start (apiserver_request_total, verbs POST, PUT,
#     PATCH, DELETE and APPLY; the Lease's excluded), and the peak of open connections
#     from the operator to the apiserver;
#   - warnings logged during the cold start;
#   - a warm restart (nothing changed): writes in WARM_WINDOW seconds after /readyz;
#   - RSS at /readyz, once everything is Ready, and after the warm restart;
#   - one policy edit to its decision (EDITS edits): median, p99, max;
#   - a rotation (`authplane rotate`) to the new kid in the JWKS.
#
#   KUBECONFIG=... scripts/scale-cluster.sh                 # builds target/release/authplane
#   KUBECONFIG=... BIN=/other/authplane scripts/scale-cluster.sh   # another build (before/after)
#   KEYS=100 POLICIES=1000 KUBECONFIG=... scripts/scale-cluster.sh # smaller
#
# Needs kubectl and python3 on PATH, and rights to create namespaces, SigningKeys and
# AuthPolicies (the operator itself runs with the same kubeconfig). The CRDs are applied
# from crds/ only if missing. Everything it makes lives in namespaces named
# $PREFIX-*, and is deleted at the end (KEEP=1 keeps it). Objects carry the label
# authplane.io/instance=$PREFIX, and a build that knows --instance runs as that
# instance, so that other authplane installations on the cluster leave them alone (a
# build before --instance manages every SigningKey of the cluster).
# Absolute numbers depend on the machine and the apiserver: compare builds in one session.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${KUBECONFIG:?set KUBECONFIG to the cluster to measure}"
export KUBECONFIG
KEYS=${KEYS:-1000}
POLICIES=${POLICIES:-10000}
NAMESPACES=${NAMESPACES:-10}
EDITS=${EDITS:-20}
WARM_WINDOW=${WARM_WINDOW:-30}
PREFIX=${PREFIX:-scale}
KUBECTL=${KUBECTL:-kubectl}
READY_TIMEOUT=${READY_TIMEOUT:-300}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=${PORT:-$(free_port)}
PROXY_PORT=$(free_port)
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --quiet --bin authplane
  BIN=target/release/authplane
fi

work=$(mktemp -d)
operator=""
proxy=""
sampler=""
cleanup() {
  for pid in $sampler $operator $proxy; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then
    namespaces=$(for ((n = 0; n < NAMESPACES; n++)); do echo "$PREFIX-$n"; done)
    # shellcheck disable=SC2086
    "$KUBECTL" delete namespace $namespaces "$PREFIX-system" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    rm -rf "$work"
  else
    echo "kept $work and the namespaces $PREFIX-*" >&2
  fi
}
trap cleanup EXIT

# The measuring half, in Python: the apiserver through `kubectl proxy` (plain HTTP on
# loopback), the operator over HTTP.
cat >"$work/measure.py" <<'PY'
import json, os, sys, time, urllib.request, urllib.error

API = "http://127.0.0.1:%s" % os.environ["PROXY_PORT"]
OPERATOR = "http://127.0.0.1:%s" % os.environ["PORT"]
PREFIX = os.environ["PREFIX"]
SELECTOR = "authplane.io/instance=" + PREFIX
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}

def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()

def status_of(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, r.headers.get("x-authplane-reason")
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers.get("x-authplane-reason")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, None

def writes_by_kind():
    """Writes the apiserver has served so far, but for Leases, by "resource/subresource verb"."""
    counts = {}
    for line in get(API + "/metrics").decode().splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        fields = dict(kv.split("=", 1) for kv in labels[len("apiserver_request_total{"):-1].split(","))
        fields = {k: v.strip('"') for k, v in fields.items()}
        if fields.get("verb") in WRITE_VERBS and fields.get("resource") != "leases":
            kind = "%s%s %s" % (fields.get("resource"),
                                "/" + fields["subresource"] if fields.get("subresource") else "",
                                fields.get("verb"))
            counts[kind] = counts.get(kind, 0) + int(float(value))
    return counts

def writes():
    return sum(writes_by_kind().values())

def writes_since(path):
    """What was written since `path` (a JSON of writes_by_kind) was taken, the most first:
    the whole apiserver's, so other clients' writes count too."""
    before = json.load(open(path))
    after = writes_by_kind()
    diff = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    return ", ".join("%s %d" % (k, v) for k, v in sorted(diff.items(), key=lambda kv: -kv[1]))

def objects(plural):
    items, cont = [], ""
    while True:
        url = "%s/apis/authplane.io/v1alpha1/%s?limit=2000&labelSelector=%s%s" % (
            API, plural, urllib.request.quote(SELECTOR), "&continue=" + urllib.request.quote(cont) if cont else "")
        page = json.loads(get(url, timeout=120))
        items += page["items"]
        cont = page["metadata"].get("continue")
        if not cont:
            return items

def ready_count(plural):
    n = 0
    for o in objects(plural):
        for c in (o.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == "True":
                n += 1
    return n

def rss(pid):
    for line in open("/proc/%s/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0

def observe(pid, started, sample, keys, policies, timeout):
    """Cold start: /readyz, 503s after it, all Ready; prints key=value lines. Decisions
    are asked for in one thread, Ready is counted in another (a list of 10,000 policies
    takes a while)."""
    import threading
    paths = ["/authz/%s" % p for p in sample]
    state = {"ready_at": None, "answers": 0, "unavailable": 0, "done": False}
    lock = threading.Lock()

    def say(line):
        with lock:
            print(line)
            sys.stdout.flush()

    def decisions():
        i = 0
        while not state["done"]:
            if state["ready_at"] is None:
                code, _ = status_of(OPERATOR + "/readyz")
                if code == 200:
                    state["ready_at"] = time.time()
                    say("ready_s=%.2f" % (state["ready_at"] - started))
                    say("rss_ready_mib=%d" % rss(pid))
            code, _ = status_of(OPERATOR + paths[i % len(paths)])
            i += 1
            if state["ready_at"] is not None and code is not None:
                state["answers"] += 1
                state["unavailable"] += code == 503
            time.sleep(0.01)

    polling = threading.Thread(target=decisions, daemon=True)
    polling.start()
    keys_at = policies_at = None
    counted = (0, 0)
    while time.time() - started < timeout:
        if keys_at is None:
            n = ready_count("signingkeys")
            counted = (n, counted[1])
            if n >= keys:
                keys_at = time.time()
                say("keys_ready_s=%.2f" % (keys_at - started))
        if policies_at is None:
            n = ready_count("authpolicies")
            counted = (counted[0], n)
            if n >= policies:
                policies_at = time.time()
                say("policies_ready_s=%.2f" % (policies_at - started))
                say("rss_all_ready_mib=%d" % rss(pid))
        if keys_at and policies_at and state["ready_at"]:
            break
        time.sleep(1)
    else:
        say("timeout=1 (Ready: %d keys, %d policies)" % counted)
    state["done"] = True
    polling.join()
    say("answers_after_ready=%d" % state["answers"])
    say("unavailable_after_ready=%d" % state["unavailable"])

def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]

def edits(tokens):
    """Each edit sets a policy's audience to one its token has: time to the first 200."""
    took = []
    for path, audience, token in tokens:
        ns, name = path.split("/")
        url = OPERATOR + "/authz/" + path
        auth = {"Authorization": "Bearer " + token}
        code, _ = status_of(url, auth)
        if code == 200:
            raise SystemExit("policy %s already accepts %s" % (path, audience))
        body = json.dumps({"spec": {"audiences": [audience]}}).encode()
        req = urllib.request.Request(
            "%s/apis/authplane.io/v1alpha1/namespaces/%s/authpolicies/%s" % (API, ns, name),
            data=body, method="PATCH", headers={"Content-Type": "application/merge-patch+json"})
        began = time.time()
        urllib.request.urlopen(req, timeout=30).read()
        while status_of(url, auth)[0] != 200:
            if time.time() - began > 60:
                raise SystemExit("edit of %s not served within 60 s" % path)
        took.append((time.time() - began) * 1000)
    print("edit_ms_median=%.1f" % percentile(took, 50))
    print("edit_ms_p99=%.1f" % percentile(took, 99))
    print("edit_ms_max=%.1f" % max(took))

def kids(path):
    status, _ = status_of(OPERATOR + path)
    if status != 200:
        return set()
    return {k["kid"] for k in json.loads(get(OPERATOR + path))["keys"]}

def rotation(path, began):
    before = set(sys.argv[4:])
    while time.time() - began < 120:
        if kids(path) - before:
            print("rotation_s=%.2f" % (time.time() - began))
            return
        time.sleep(0.01)
    print("rotation_s=timeout")

command = sys.argv[1]
if command == "writes":
    print(writes())
elif command == "observe":
    spec = json.loads(sys.argv[2])
    observe(spec["pid"], spec["started"], spec["sample"], spec["keys"], spec["policies"], spec["timeout"])
elif command == "edits":
    edits(json.load(open(sys.argv[2])))
elif command == "kids":
    print(" ".join(sorted(kids(sys.argv[2]))))
elif command == "rotation":
    rotation(sys.argv[2], float(sys.argv[3]))
elif command == "writes_by_kind":
    print(json.dumps(writes_by_kind()))
elif command == "writes_since":
    print(writes_since(sys.argv[2]))
elif command == "rss":
    print(rss(sys.argv[2]))
PY
measure() { PROXY_PORT=$PROXY_PORT PORT=$PORT PREFIX=$PREFIX python3 "$work/measure.py" "$@"; }
value() { grep "^$1=" "$2" | tail -1 | cut -d= -f2; }

"$KUBECTL" proxy --port "$PROXY_PORT" --address 127.0.0.1 >"$work/proxy.log" 2>&1 &
proxy=$!
until curl -fs "http://127.0.0.1:$PROXY_PORT/readyz" >/dev/null 2>&1; do
  kill -0 "$proxy" 2>/dev/null || { cat "$work/proxy.log" >&2; exit 1; }
  sleep 0.1
done

if ! "$KUBECTL" get crd signingkeys.authplane.io >/dev/null 2>&1; then
  "$KUBECTL" apply --server-side -f crds/ >/dev/null
  "$KUBECTL" wait --for=condition=Established crd --all --timeout=60s >/dev/null
fi

echo "creating $KEYS SigningKeys and $POLICIES AuthPolicies in $NAMESPACES namespaces ..." >&2
{
  for ((n = 0; n < NAMESPACES; n++)); do
    printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s-%d}\n' "$PREFIX" "$n"
  done
  printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s-system}\n' "$PREFIX"
} >"$work/namespaces.yaml"
"$KUBECTL" apply -f "$work/namespaces.yaml" >/dev/null
python3 - "$KEYS" "$POLICIES" "$NAMESPACES" "$PREFIX" "$work" <<'PY'
import json, sys
keys, policies, namespaces, prefix, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
labels = {"authplane.io/instance": prefix}
def ns(key): return "%s-%d" % (prefix, key % namespaces)
objects = [{"apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "k%d" % k, "namespace": ns(k), "labels": labels},
            "spec": {"algorithm": "ES256"}} for k in range(keys)]
objects += [{"apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
             "metadata": {"name": "p%d" % p, "namespace": ns(p % keys), "labels": labels},
             "spec": {"issuers": [{"signingKeyRef": {"name": "k%d" % (p % keys)}}],
                      "audiences": ["aud-%d" % p],
                      "rollout": {"mode": "Enforce", "percentage": 100}}} for p in range(policies)]
for i in range(0, len(objects), 500):
    with open("%s/objects-%05d.json" % (work, i), "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": objects[i:i + 500]}, f)
PY
for file in "$work"/objects-*.json; do "$KUBECTL" create -f "$file" >/dev/null; done

instance=()
"$BIN" run --help | grep -q -- '--instance' && instance=(--instance "$PREFIX")

start_operator() {
  RUST_LOG=${RUST_LOG:-info} "$BIN" run --kubeconfig "$KUBECONFIG" --namespace "$PREFIX-system" \
    --identity "$PREFIX-bench" --listen "127.0.0.1:$PORT" --external-url "http://127.0.0.1:$PORT" \
    "${instance[@]}" >>"$work/operator-$1.log" 2>&1 &
  operator=$!
}

stop_operator() {
  kill -TERM "$operator" && wait "$operator" 2>/dev/null || true
  operator=""
}

# Open connections from the operator to the apiserver, sampled every 100 ms: the peak.
sample_connections() {
  local pid=$1 peak=0 n
  while kill -0 "$pid" 2>/dev/null; do
    n=$(ss -tnpH state established 2>/dev/null | grep -c "pid=$pid," || true)
    [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" >"$work/connections"
    sleep 0.1
  done
}

sample=$(python3 -c "
import json, sys
k, p, n, prefix = $KEYS, $POLICIES, $NAMESPACES, '$PREFIX'
picks = [p - 1 - i * (p // 16) for i in range(16)]
print(json.dumps(['%s-%d/p%d' % (prefix, (j % k) % n, j) for j in picks]))")

# Let the namespace controllers' own writes (ServiceAccounts, root CA ConfigMaps) settle.
sleep 5
before=$(measure writes)
echo 0 >"$work/connections"
started=$(date +%s.%N)
start_operator cold
sample_connections "$operator" &
sampler=$!
measure observe "{\"pid\": $operator, \"started\": $started, \"sample\": $sample, \"keys\": $KEYS, \"policies\": $POLICIES, \"timeout\": $READY_TIMEOUT}" | tee "$work/cold"
# Late writes of the cold start (statuses still on their way) count too.
sleep 10
cold_writes=$(($(measure writes) - before))
rss_later=$(measure rss "$operator")
warnings=$(grep -c '"level":"WARN"' "$work/operator-cold.log" || true)
# The most frequent warnings, by message: what to look at when the count grows.
top_warnings=$(grep '"level":"WARN"' "$work/operator-cold.log" | python3 -c '
import collections, json, sys
said = collections.Counter()
for line in sys.stdin:
    try:
        said[json.loads(line).get("fields", {}).get("message", "?")] += 1
    except ValueError:
        pass
for message, count in said.most_common(3):
    print(f"  {count:6d}  {message[:110]}")
' || true)
stop_operator
lease_lost=$(grep -c 'lease lost' "$work/operator-cold.log" || true)
kill "$sampler" 2>/dev/null || true
sampler=""

# Warm restart: nothing changed since.
before=$(measure writes)
measure writes_by_kind >"$work/writes-before-warm.json"
started=$(date +%s.%N)
start_operator warm
until curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
  kill -0 "$operator" 2>/dev/null || { tail -20 "$work/operator-warm.log" >&2; exit 1; }
  sleep 0.02
done
warm_ready=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
sleep "$WARM_WINDOW"
warm_writes=$(($(measure writes) - before))
warm_writes_by_kind=$(measure writes_since "$work/writes-before-warm.json")
rss_warm=$(measure rss "$operator")

# Policy edits to their decisions: tokens for the new audiences, minted with the keys.
python3 - "$EDITS" "$KEYS" "$POLICIES" "$NAMESPACES" "$PREFIX" >"$work/edit-plan" <<'PY'
import sys
edits, keys, policies, namespaces, prefix = map(str, sys.argv[1:6])
edits, keys, policies, namespaces = int(edits), int(keys), int(policies), int(namespaces)
for e in range(edits):
    p = (e * 7919) % policies
    k = p % keys
    print("%s-%d %d %d" % (prefix, k % namespaces, p, k))
PY
echo "[" >"$work/edits.json"
first=1
while read -r ns p k; do
  token=$("$BIN" token mint --cluster --key "$ns/k$k" --sub "user-$p" --aud "edit-$p" --ttl 1h 2>/dev/null)
  [ $first = 1 ] || echo "," >>"$work/edits.json"
  first=0
  printf '["%s/p%s", "edit-%s", "%s"]' "$ns" "$p" "$p" "$token" >>"$work/edits.json"
done <"$work/edit-plan"
echo "]" >>"$work/edits.json"
measure edits "$work/edits.json" | tee "$work/edits"

# A rotation to the new kid in the JWKS.
jwks="/$PREFIX-0/k0/.well-known/jwks.json"
# shellcheck disable=SC2046
old_kids=$(measure kids "$jwks")
began=$(date +%s.%N)
"$BIN" rotate "$PREFIX-0/k0" >/dev/null 2>&1
# shellcheck disable=SC2086
measure rotation "$jwks" "$began" $old_kids | tee "$work/rotation"
stop_operator

cat <<EOF

$(basename "$BIN") ($("$BIN" --version 2>/dev/null || echo unknown)), $KEYS SigningKeys (ES256) / $POLICIES AuthPolicies over $NAMESPACES namespaces
cold start to /readyz                      $(value ready_s "$work/cold") s
/authz answers after ready / 503 of them    $(value answers_after_ready "$work/cold") / $(value unavailable_after_ready "$work/cold")
all SigningKeys Ready / all AuthPolicies   $(value keys_ready_s "$work/cold") s / $(value policies_ready_s "$work/cold") s
apiserver writes, cold start (Leases out)  $cold_writes
open connections to the apiserver, peak    $(cat "$work/connections")
warnings logged during the cold start      $warnings${top_warnings:+
$top_warnings}
"lease lost" logged at a clean shutdown    $lease_lost
warm restart to /readyz                    $warm_ready s
warm restart: writes in ${WARM_WINDOW} s          $warm_writes${warm_writes_by_kind:+ ($warm_writes_by_kind)}
RSS at /readyz / all Ready / +10 s / warm  $(value rss_ready_mib "$work/cold") / $(value rss_all_ready_mib "$work/cold") / $rss_later / $rss_warm MiB
policy edit to decision, median/p99/max    $(value edit_ms_median "$work/edits") / $(value edit_ms_p99 "$work/edits") / $(value edit_ms_max "$work/edits") ms
rotation to the new kid in the JWKS        $(value rotation_s "$work/rotation") s
EOF
