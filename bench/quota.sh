#!/usr/bin/env bash
# What quota admission adds to a request: bench/quota.sh [rounds]
# Three configurations of the same release proxy, alternating in each round: no quota;
# a quota with three limits (requests, tokens, cost) on this proxy's own counters; the
# same quota with counters in Redis on loopback (redis-server started here, core 0).
# The proxy is pinned to core 1 with one openai-compatible backend (bench-upstream,
# core 0); oha on core 0 sends non-streaming requests at RATE requests/s (default 2000,
# open loop, latency corrected) for 10 s after a 3 s warm-up, then as fast as it can
# (c=32). Prints p50 and p99 at the fixed rate, and requests/s flat out.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}; rate=${RATE:-2000}
# shellcheck source=bench/common.sh
. bench/common.sh
bench_build
work="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/none" "$work/quota"
gateway_yaml > "$work/none/gateway.yaml"
cp "$work/none/gateway.yaml" "$work/quota/"
cat > "$work/quota/quota.yaml" <<'YAML'
apiVersion: switchboard.dev/v1alpha1
kind: AIQuota
metadata: {name: q}
spec:
  limits:
    - {metric: Requests, max: 1000000000, window: Minute}
    - {metric: TotalTokens, max: 1000000000000, window: Day}
    - {metric: CostUSD, max: 1000000, window: Month}
YAML
bench_redis 16390
taskset -c 0 target/release/bench-upstream >/dev/null 2>&1 &
sleep 1
body='{"model":"m","max_tokens":64,"messages":[{"role":"user","content":"hello there, how are you today?"}]}'
load() {
  oha_post http://127.0.0.1:9100/v1/chat/completions "$body" "$@"
}
run() {
  local label=$1 dir=$2; shift 2
  RUST_LOG=warn taskset -c 1 target/release/switchboard-proxy --manifests "$dir" \
    --listen 127.0.0.1:9100 --metrics-listen 127.0.0.1:9101 "$@" >/dev/null 2>&1 & local px=$!
  sleep 1
  load -z 3s >/dev/null
  local fixed flat
  fixed=$(load -z 10s -q "$rate" --latency-correction | grep -E "50.00%|99.00%" | tr -s ' \t' ' ' | paste -sd' ')
  flat=$(load -z 10s | grep -E "Requests/sec" | tr -s ' \t' ' ')
  echo "$label: at $rate/s:$fixed | flat out:$flat"
  kill "$px"; wait "$px" 2>/dev/null || true
}
for round in $(seq "$rounds"); do
  run "round $round no quota" "$work/none"
  run "round $round quota, local" "$work/quota"
  run "round $round quota, Redis" "$work/quota" --redis-url redis://127.0.0.1:16390/0
done
