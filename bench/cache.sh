#!/usr/bin/env bash
# A cache hit against a call that goes upstream: bench/cache.sh [rounds]
# The same release proxy, alternating in each round: a route without a cache (every
# request goes to the upstream); the same route with a cache in memory, warmed with the
# one request the load repeats (every request a hit); the same with the cache in Redis
# on loopback (redis-server started here, core 0). For reference, the upstream alone,
# without the proxy. The proxy is pinned to core 1 with one openai-compatible backend
# (bench-upstream, core 0, which answers at once: a real provider adds its own 0.3-30 s
# to every miss); oha on core 0 sends non-streaming requests at RATE requests/s (default
# 2000, open loop, latency corrected) for 10 s after a 3 s warm-up, then as fast as it
# can (c=32). Prints p50 and p99 at the fixed rate, and requests/s flat out.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}; rate=${RATE:-2000}
# shellcheck source=bench/common.sh
. bench/common.sh
bench_build
work="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/plain" "$work/cached"
gateway_yaml > "$work/plain/gateway.yaml"
gateway_yaml "  cache: {ttl: 1h}" > "$work/cached/gateway.yaml"
bench_redis 16391
taskset -c 0 target/release/bench-upstream >/dev/null 2>&1 &
sleep 1
body='{"model":"m","max_tokens":64,"temperature":0,"messages":[{"role":"user","content":"hello there, how are you today?"}]}'
load() {
  local target=$1; shift
  oha_post "$target" "$body" "$@"
}
measure() {
  local label=$1 target=$2
  load "$target" -z 3s >/dev/null
  local fixed flat
  fixed=$(load "$target" -z 10s -q "$rate" --latency-correction | grep -E "50.00%|99.00%" | tr -s ' \t' ' ' | paste -sd' ')
  flat=$(load "$target" -z 10s | grep -E "Requests/sec" | tr -s ' \t' ' ')
  echo "$label: at $rate/s:$fixed | flat out:$flat"
}
run() {
  local label=$1 dir=$2; shift 2
  RUST_LOG=warn taskset -c 1 target/release/switchboard-proxy --manifests "$dir" \
    --listen 127.0.0.1:9100 --metrics-listen 127.0.0.1:9101 "$@" >/dev/null 2>&1 & local px=$!
  sleep 1
  measure "$label" http://127.0.0.1:9100/v1/chat/completions
  curl -s http://127.0.0.1:9101/metrics | grep -E '^switchboard_cache_lookups_total' | sed 's/^/    /' || true
  kill "$px"; wait "$px" 2>/dev/null || true
}
for round in $(seq "$rounds"); do
  measure "round $round upstream alone (no proxy)" http://127.0.0.1:9000/v1/chat/completions
  run "round $round proxy, no cache" "$work/plain"
  run "round $round proxy, memory hit" "$work/cached" --cache-store memory
  run "round $round proxy, Redis hit" "$work/cached" --redis-url redis://127.0.0.1:16391/0
done
