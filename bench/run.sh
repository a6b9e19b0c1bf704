#!/usr/bin/env bash
# The benchmark in one command: installs its tools (idempotent), builds the release
# binaries, runs every scenario and prints the report. Arguments go to bench.py:
#   bench/run.sh                  full run (about 6 minutes)
#   bench/run.sh --save           ... and write bench/results/<date>-<revision>.md
#   bench/run.sh --quick          smoke run (about 1 minute), figures not comparable
#   bench/run.sh --only "2000 rps" --rounds 3
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
packages=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || packages+=(nginx-light)
command -v taskset >/dev/null || packages+=(util-linux)
command -v curl >/dev/null || packages+=(curl)
if [ ${#packages[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
fi
export PATH="$PATH:/usr/sbin"

# The load generator: oha, pinned so that runs stay comparable.
OHA_VERSION=1.16.0
if ! oha --version 2>/dev/null | grep -q "$OHA_VERSION"; then
  cargo install --locked oha --version "$OHA_VERSION"
fi

cargo build --release --locked -p switchboard-proxy -p switchboard-bench
exec python3 bench/bench.py "$@"
