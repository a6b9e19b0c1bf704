# Shared by bench/ab.sh, bench/quota.sh and bench/cache.sh (sourced, not run).

# oha pinned, as in bench/run.sh, so that runs stay comparable.
OHA_VERSION=1.16.0
BENCH_KEY=sk-bench-consumer-key-0001

# Installs oha if it is missing and builds the proxy and the fake upstream.
bench_build() {
  oha --version 2>/dev/null | grep -q "$OHA_VERSION" || cargo install --locked oha --version "$OHA_VERSION"
  cargo build --release --locked -q -p switchboard-bench -p switchboard-proxy
}

# provider_yaml NAME PORT: bench-upstream on 127.0.0.1:PORT as a priced
# openai-compatible AIProvider NAME serving model `m`, keyed by Secret `up`.
provider_yaml() {
  cat <<YAML
apiVersion: switchboard.dev/v1alpha1
kind: AIProvider
metadata: {name: $1}
spec:
  type: openai-compatible
  endpoint: http://127.0.0.1:$2/v1
  auth: {secretRef: {name: up, key: key}}
  models: [{name: m, pricing: {inputPerMillion: 1, outputPerMillion: 2}}]
YAML
}

# base_yaml: Secret `up`, provider `up` (bench-upstream on 127.0.0.1:9000), and
# consumer `c` with BENCH_KEY; no route.
base_yaml() {
  cat <<YAML
apiVersion: v1
kind: Secret
metadata: {name: up}
stringData: {key: sk-upstream-bench}
---
$(provider_yaml up 9000)
---
apiVersion: switchboard.dev/v1alpha1
kind: AIConsumer
metadata: {name: c}
spec:
  keys: [{secretRef: {name: ck, key: key}}]
---
apiVersion: v1
kind: Secret
metadata: {name: ck}
stringData: {key: $BENCH_KEY}
YAML
}

# gateway_yaml [EXTRA]: base_yaml and route `r` for model `m` on provider `up`, with
# EXTRA appended to the route's spec (for example a cache block).
gateway_yaml() {
  base_yaml
  cat <<YAML
---
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {name: r}
spec:
  models: [m]
  backends: [{provider: up, model: m}]
${1:-}
YAML
}

# oha_post URL BODY [OHA FLAGS...]: 32 connections POSTing BODY to URL with BENCH_KEY,
# oha on core 0.
oha_post() {
  local url=$1 body=$2; shift 2
  taskset -c 0 oha "$@" -c 32 --no-tui -m POST -H "authorization: Bearer $BENCH_KEY" \
    -H "content-type: application/json" -d "$body" "$url"
}

# bench_redis PORT: a throwaway redis-server on loopback PORT, on core 0, in the
# background (the caller's EXIT trap kills its jobs).
bench_redis() {
  command -v redis-server >/dev/null || { echo "needs Debian's redis-server (apt-get install redis-server)" >&2; exit 1; }
  taskset -c 0 redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
}
