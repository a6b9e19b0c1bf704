#!/usr/bin/env bash
# Soak: bench/soak.sh [minutes, default 3]
# Mixed streaming and non-streaming load on one release proxy for a bounded time, with
# faults injected all along, recording the proxy's memory and file descriptors; fails
# when a request that could have completed did not, or when memory or file descriptors
# grow after the warm-up. Loopback only; run on demand, not in CI.
#
# - Route `m` has two backends: bench-upstream on :9001 with 10% faults (a 500, a
#   connection that never answers, a body that breaks off, in turn) and a healthy one
#   on :9000 as the fallback; attempts time out after 500 ms. Circuit breaking is off,
#   so the faulty backend keeps taking its share all along.
# - A quota (FailOpen) counts requests and tokens in Redis; Redis is stopped for a
#   fifth of the run in the middle, then started again.
# - The route is rewritten every 10 s (a reload under load).
# - 16 clients, a quarter streaming; every 10th stream is abandoned after its first
#   bytes (bench-soak).
# Samples go to bench/results/soak-<date>.csv and a summary to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-3}
seconds=$((minutes * 60))
# shellcheck source=bench/common.sh
. bench/common.sh
cargo build --release --locked -q -p switchboard-bench -p switchboard-proxy
work="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

redis_port=16391
route() {
  cat <<YAML
apiVersion: switchboard.dev/v1alpha1
kind: AIRoute
metadata: {name: r}
spec:
  models: [m, $1]
  backends:
    - {provider: faulty, model: m}
    - {provider: up, model: m, priority: 1}
  timeouts: {request: 500ms}
  # Never eject the faulty backend: the faults go on for the whole run.
  circuitBreaker: {consecutiveFailures: 0}
YAML
}
{ base_yaml; echo ---; provider_yaml faulty 9001; echo ---; } > "$work/gateway.yaml"
cat >> "$work/gateway.yaml" <<'YAML'
apiVersion: switchboard.dev/v1alpha1
kind: AIQuota
metadata: {name: q}
spec:
  failurePolicy: FailOpen
  limits:
    - {metric: Requests, max: 1000000000, window: Minute}
    - {metric: TotalTokens, max: 1000000000000, window: Day}
YAML
route alias-0 > "$work/route.yaml"

bench_redis "$redis_port"
taskset -c 0 target/release/bench-upstream --listen 127.0.0.1:9000 >/dev/null 2>&1 &
taskset -c 0 target/release/bench-upstream --listen 127.0.0.1:9001 --fault-percent 10 >/dev/null 2>&1 &
RUST_LOG=warn taskset -c 1 target/release/switchboard-proxy --manifests "$work" \
  --listen 127.0.0.1:9100 --metrics-listen 127.0.0.1:9101 \
  --redis-url "redis://127.0.0.1:$redis_port" > "$work/proxy.log" 2>&1 &
proxy=$!
for _ in $(seq 50); do
  curl -sf http://127.0.0.1:9100/readyz >/dev/null && break
  sleep 0.2
done

# Faults on a schedule: reloads every 10 s; Redis down from 40% to 60% of the run.
(
  for i in $(seq 1 $((seconds / 10))); do
    sleep 10
    route "alias-$i" > "$work/route.yaml.new" && mv "$work/route.yaml.new" "$work/route.yaml"
  done
) &
(
  sleep $((seconds * 2 / 5))
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  echo "-- Redis stopped"
  sleep $((seconds / 5))
  bench_redis "$redis_port"
  echo "-- Redis started"
) &

mkdir -p bench/results
csv="bench/results/soak-$(date -u +%Y-%m-%d-%H%M).csv"
echo "soak: ${minutes} min, proxy pid $proxy, samples in $csv"
status=0
taskset -c 0 target/release/bench-soak --pid "$proxy" --key "$BENCH_KEY" \
  --duration "${seconds}s" --out "$csv" || status=$?
echo "proxy warnings and errors (by message):"
grep -E "WARN|ERROR" "$work/proxy.log" | sed -E 's/^[^ ]+ +//; s/[0-9a-f]{8}-[0-9a-f-]{27}//g' | cut -c1-120 | sort | uniq -c | sort -rn | head -10 || true
exit $status
