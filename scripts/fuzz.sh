#!/usr/bin/env bash
# Bounded fuzzing, run on demand (not in CI): the SSE splitter and stream decoders,
# client request parsing and translation, provider response parsing, and manifest
# loading (YAML documents -> objects -> compile -> a Snapshot a proxy accepts).
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
#
# Seeds come from the providers' documented examples (proxy/tests/golden) and, for
# manifests, from examples/**/*.yaml. A crash leaves its input in
# fuzz/artifacts/<target>/; fix it and keep the input as a regression test next to the
# code it broke.
set -euo pipefail
shopt -s globstar nullglob
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(sse_stream client_requests provider_responses manifests)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# cargo fuzz builds with sanitizer flags only nightly compilers accept; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP (no other toolchain can be fetched here).
export RUSTC_BOOTSTRAP=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  corpus="$work/$target"
  mkdir -p "$corpus"
  for f in proxy/tests/golden/*/*.sse proxy/tests/golden/*/*.json examples/**/*.yaml; do
    seed="$corpus/$(basename "$(dirname "$f")")-$(basename "$f")"
    case "$target:$f" in
      manifests:*.yaml) cp "$f" "$seed" ;;
      manifests:*) ;;
      *:*.yaml) ;;
      sse_stream:*.sse) { printf '\x07'; cat "$f"; } > "$seed" ;; # first byte: chunk size
      sse_stream:*) ;;
      *:*.json) cp "$f" "$seed" ;;
    esac
  done
  echo "== $target: ${seconds}s"
  cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
done
