#!/usr/bin/env bash
# Hookline's whole test suite, exactly what CI runs (.ci/run calls this):
# formatting, clippy, then a throwaway PostgreSQL (the store tests run against it and SQLite),
# the unit tests, a private local cluster with one real node, Hookline's image (built from the
# Dockerfile) and the test pods' image, and the integration tests (tests/integration/node.rs runs the chart's
# pods on the node). PostgreSQL, the cluster and its node are stopped on exit, whatever happened.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }
# shellcheck source=hack/lib.sh
. hack/lib.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

# rustc cannot see dead code behind the library's `pub`; this shows it what the binary uses.
step "dead code"
hack/dead-code.sh

# A PostgreSQL of its own, so a developer's `hack/postgres.sh up` is left alone.
export HOOKLINE_POSTGRES_DIR="$ROOT/target/test-postgres"
export HOOKLINE_CLUSTER_DIR="$ROOT/target/test-cluster"
export HOOKLINE_TEST_KUBECONFIG="$HOOKLINE_CLUSTER_DIR/kubeconfig"
# The node must leave the machine as it found it: compared after `down`.
MACHINE_BEFORE="$ROOT/target/machine-before-node.txt"
cleanup() {
  local status=$?
  hack/cluster.sh down >/dev/null 2>&1 || true
  hack/postgres.sh down >/dev/null 2>&1 || true
  if [ -f "$MACHINE_BEFORE" ] && ! hack/node.sh snapshot | diff -u "$MACHINE_BEFORE" - >&2; then
    echo "hack/cluster.sh down left the machine changed (above: before the node, and now)" >&2
    status=1
  fi
  exit "$status"
}
trap cleanup EXIT
step "PostgreSQL"
eval "$(hack/postgres.sh up | tail -n 1)"

step "unit tests"
cargo test --locked --lib --bins

# The reference libraries a subscriber would use check our wire format (tests/tools/verify.py).
step "python test tools"
if [ ! -x target/pyenv/bin/python ]; then
  python3 -m venv target/pyenv 2>/dev/null || {
    # Debian's own python3 keeps venv in a separate package.
    apt_install python3-venv
    rm -rf target/pyenv && python3 -m venv target/pyenv
  }
fi
target/pyenv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/tools/requirements.txt
export HOOKLINE_TEST_PYTHON="$ROOT/target/pyenv/bin/python"

step "helm"
hack/helm.sh version --short

# Argo CD's health scripts are Lua 5.1 (tests/integration/argocd_health.rs runs them).
step "lua5.1"
command -v lua5.1 >/dev/null || apt_install lua5.1
lua5.1 -v

# promtool (Debian's prometheus package) checks and unit-tests the chart's alerts and dashboard
# (tests/integration/monitoring.rs); the package's server is not started.
step "promtool"
command -v promtool >/dev/null || apt_install prometheus
promtool --version | head -n 1

# A cluster of its own, so a developer's `hack/cluster.sh up` is left alone; with a node, for
# tests/integration/node.rs (one node per machine: a developer's node must be down).
step "local cluster with a node"
mkdir -p target
hack/node.sh snapshot >"$MACHINE_BEFORE"
hack/cluster.sh up --node

step "images: Hookline's (release build, the Dockerfile's runtime stage) and the test pods'"
HOOKLINE_TEST_IMAGE=$(hack/image.sh | tail -n 1)
HOOKLINE_TEST_TOOLS_IMAGE=$(hack/image.sh tools | tail -n 1)
export HOOKLINE_TEST_IMAGE HOOKLINE_TEST_TOOLS_IMAGE
echo "$HOOKLINE_TEST_IMAGE $HOOKLINE_TEST_TOOLS_IMAGE"

step "integration tests"
cargo test --locked --no-fail-fast --test '*'

step "benchmark smoke run (checks hack/bench.sh still works; no timing is asserted)"
hack/bench.sh --smoke | tail -n 1
hack/bench.sh --smoke --store postgres --replicas 2 | tail -n 1
