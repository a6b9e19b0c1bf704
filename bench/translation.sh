#!/usr/bin/env bash
# The cost of translation: the same request to the same fake OpenAI-shaped upstream,
# sent as OpenAI chat (pass-through, bytes untouched) and as Anthropic messages
# (translated both ways through the IR). Throughput at c=32 (closed loop, 10 s, two
# rounds) and proxy CPU per request. Needs bench/run.sh's tools (oha) and the release
# builds:  cargo build --release -p switchboard-proxy -p switchboard-bench
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill $P $UP 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
ROOT="$root" python3 - <<'PY'
import re
src=open('%s/bench/bench.py' % __import__('os').environ['ROOT']).read()
m=re.search(r'MANIFESTS = """\\\n(.*?)"""', src, re.S)
open('gateway.yaml','w').write(m.group(1).format(upstream_port=18181, provider_key='sk-up', gateway_key='sk-gw-0123456789abcdef'))
PY
mkdir -p m && mv gateway.yaml m/
taskset -c 0 $root/target/release/bench-upstream --listen 127.0.0.1:18181 > up.log 2>&1 &
UP=$!
taskset -c 1 $root/target/release/switchboard-proxy --manifests m --listen 127.0.0.1:18180 --log-format json > proxy.log 2>&1 &
P=$!
sleep 1
echo '{"model":"bench","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":64}' > chat.json
echo '{"model":"bench","max_tokens":64,"messages":[{"role":"user","content":"Say hello in five words."}]}' > msg.json
cpu() { awk '{print $14+$15}' /proc/$P/stat; }
for round in 1 2; do
for case in "chat.json /v1/chat/completions" "msg.json /v1/messages"; do
  set -- $case
  taskset -c 0 oha --no-tui -z 3s -c 32 -m POST -T application/json -H "authorization: Bearer sk-gw-0123456789abcdef" -D $1 http://127.0.0.1:18180$2 > /dev/null
  before=$(cpu)
  out=$(taskset -c 0 oha --no-tui --output-format json -z 10s -c 32 -m POST -T application/json -H "authorization: Bearer sk-gw-0123456789abcdef" -D $1 http://127.0.0.1:18180$2)
  after=$(cpu)
  python3 "$root/bench/report_run.py" "$out" $before $after $2
done
done
