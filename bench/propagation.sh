#!/usr/bin/env bash
# Time from an object change to every proxy serving it, and compile time at scale.
# Usage: bench/propagation.sh [proxies] [rounds]   (defaults: 10 proxies, 20 changes)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p switchboard-proxy -p switchboard-operator -p switchboard-bench
cargo run --release --locked -q -p switchboard-e2e --example propagation -- "${1:-10}" "${2:-20}"
./target/release/bench-compile
