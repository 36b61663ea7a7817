# Sourced by the load scripts (loadtest.sh, loadtest-connections.sh): a work folder
# removed at exit with the server, the benchmark's manifests (one RS256 SigningKey and
# one AuthPolicy enforcing for everyone), and start_server / stop_server. Expects $bin
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
