# Sourced by the load scripts (loadtest.sh, loadtest-connections.sh, loadtest-grpc.sh,
# profile-requests.sh): a work folder
# removed at exit with the server, the benchmark's manifests (one RS256 SigningKey and
# one AuthPolicy enforcing for everyone), start_server / stop_server, and check_body (a
# gRPC ext_authz request for the benchmark policy). Expects $bin
# (the authplane binary) and $SERVER_CPU (the core the server is pinned to).

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

# start_server PORT [ARGS...]: a dev server on the server core (one worker unless
# TOKIO_WORKER_THREADS says otherwise), with extra ARGS; returns once it is ready.
start_server() {
  local port=$1
  shift
  RUST_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1} taskset -c "$SERVER_CPU" "$bin" dev \
    --manifests "$work/manifests" --state "$work/state" --listen "127.0.0.1:$port" \
    "$@" >"$work/server-$port.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/server-$port.log"; exit 1; }
}
stop_server() { kill "$server" && wait "$server" 2>/dev/null || true; server=""; }

# check_body TOKEN: a gRPC message (1-byte flag, 4-byte length, protobuf) of a
# CheckRequest as Envoy sends it for `GET /` with the token, naming the policy in the
# context extension. Protobuf written by hand: tags from envoy/service/auth/v3.
check_body() {
  python3 - "$1" <<'PY'
import sys
def varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out
def field(tag, payload):  # length-delimited
    return varint(tag << 3 | 2) + varint(len(payload)) + payload
def entry(tag, key, value):  # one map<string, string> entry
    return field(tag, field(1, key.encode()) + field(2, value.encode()))
headers = {":authority": "127.0.0.1", ":method": "GET", ":path": "/", ":scheme": "http",
           "authorization": "Bearer " + sys.argv[1]}
http = field(2, b"GET") + b"".join(entry(3, k, v) for k, v in headers.items()) + field(4, b"/")
attributes = field(4, field(2, http)) + entry(10, "authplane.io/policy", "bench/api")
message = field(1, attributes)
sys.stdout.buffer.write(b"\0" + len(message).to_bytes(4, "big") + message)
PY
}
