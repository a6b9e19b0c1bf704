#!/usr/bin/env bash
# A/B two proxy command lines on the same load: bench/ab.sh BEFORE AFTER [rounds]
# BEFORE and AFTER are a proxy binary, optionally with environment assignments before it
# and flags after it (word-split), e.g.
#   bench/ab.sh "target/release/switchboard-proxy --metrics-listen off" \
#     "RUST_LOG=info target/release/switchboard-proxy --log-format json" 3
# Each round runs BEFORE then AFTER: the proxy pinned to core 1 with one
# openai-compatible backend (bench-upstream, core 0), then `oha -c 32` for 10 s
# (non-streaming, after a 3 s warm-up) on core 0, or at a fixed rate with RATE=N.
# Prints requests/s, p50 and p99.
# The proxy's output goes to /dev/null; RUST_LOG is `warn` (no access lines) unless the
# command line sets it.
# Build a "before" binary with: git worktree add /tmp/before REV && cargo build
# --release -p switchboard-proxy --manifest-path /tmp/before/Cargo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1; after=$2; rounds=${3:-2}
# shellcheck source=bench/common.sh
. bench/common.sh
bench_build
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
gateway_yaml > "$work/gateway.yaml"
body='{"model":"m","messages":[{"role":"user","content":"hello there, how are you today?"}]}'
# RATE=N: open loop at N requests/s (latency corrected) instead of as fast as possible.
rate=()
[ -n "${RATE:-}" ] && rate=(-q "$RATE" --latency-correction)
load() {
  oha_post http://127.0.0.1:9100/v1/chat/completions "$body" "$@" "${rate[@]}"
}
run() {
  local command=$1 label=$2
  taskset -c 0 target/release/bench-upstream >/dev/null 2>&1 & local up=$!
  # shellcheck disable=SC2086 # the command line is word-split on purpose
  RUST_LOG=warn taskset -c 1 env $command --manifests "$work" --listen 127.0.0.1:9100 >/dev/null 2>&1 & local px=$!
  sleep 1
  load -z 3s >/dev/null
  load -z 10s | grep -E "Requests/sec|50.00%|99.00%" | tr -s ' \t' ' ' | paste -sd' ' | sed "s/^/$label: /"
  kill "$px" "$up"; wait "$px" "$up" 2>/dev/null || true
}
for round in $(seq "$rounds"); do
  run "$before" "round $round before"
  run "$after" "round $round after"
done
