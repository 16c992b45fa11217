#!/usr/bin/env bash
# Hookline's benchmarks on loopback (release build, bounded in time). See BENCHMARKS.md.
#
#   hack/bench.sh            throughput and latency; the last line is one JSON object
#   hack/bench.sh --smoke    the same, a few seconds long (CI checks the script still works)
#   hack/bench.sh --scale    1,000 subscriptions: time until all are Ready, peak RSS, API requests
#
# Env: BENCH_SECONDS (per phase, default 10), BENCH_RATE (offered load, default 1000/s),
# BENCH_CONCURRENCY (publishers, default 32), BENCH_SUBS (for --scale, default 1000),
# BENCH_PHASES (e.g. "direct,batch": only these phases, for profiling one of them),
# BENCH_RANDOM_IDS=1 (event ids scattered like UUIDs instead of counting up).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODE=${1:-full}
SECONDS_PER=${BENCH_SECONDS:-10}; RATE=${BENCH_RATE:-1000}; CONC=${BENCH_CONCURRENCY:-32}; SUBS=${BENCH_SUBS:-1000}
PROFILE=release
if [ "$MODE" = "--smoke" ]; then SECONDS_PER=2; RATE=100; CONC=4; SUBS=20; PROFILE=dev; fi

log() { printf '[bench] %s\n' "$*" >&2; }
# shellcheck source=hack/lib.sh
. hack/lib.sh
session bench
log "building ($PROFILE)"
cargo build --quiet --profile "$PROFILE" --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$([ "$PROFILE" = dev ] && echo debug || echo release)"

INGEST=$(free_port); METRICS=$(free_port); RECEIVER=$(free_port)
"$BIN/hookline" run --data-dir "$WORK/data" --ingest-addr "127.0.0.1:$INGEST" --metrics-addr "127.0.0.1:$METRICS" \
  --ingest-auth none --allow-http --allow-cidr 127.0.0.0/8 --public-url "http://127.0.0.1:$INGEST" \
  --status-interval 5s --log-format json >"$WORK/hookline.log" 2>&1 &
HL=$!; PIDS+=($HL)
wait_ready "$METRICS" "$HL" "$WORK/hookline.log"

subscription() { # namespace name
  printf 'apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: %s, namespace: %s}\nspec:\n  eventTypes: ["*"]\n  endpoint: {url: "http://127.0.0.1:%s/hook"}\n  delivery: {maxConcurrency: 64}\n---\n' "$2" "$1" "$RECEIVER"
}

if [ "$MODE" = "--scale" ]; then
  "$BIN/hookline-bench" --receive-only --receiver-port "$RECEIVER" &
  PIDS+=($!)
  kubectl create namespace scale >/dev/null
  for i in $(seq 1 "$SUBS"); do subscription scale "s$i"; done >"$WORK/subs.yaml"
  # Server-wide requests (includes kubectl apply's own) and Hookline's own (its client counts them).
  api_requests() { kubectl get --raw /metrics | awk '/^apiserver_request_total/ { s += $NF } END { printf "%d", s }'; }
  hookline_requests() { curl -fsS "http://127.0.0.1:$METRICS/metrics" | awk '/^hookline_api_requests_total/ { s += $NF } END { printf "%d", s }'; }
  before=$(api_requests); hl_before=$(hookline_requests)
  start=$(date +%s.%N)
  kubectl apply -f "$WORK/subs.yaml" >/dev/null
  while :; do
    ready=$(kubectl -n scale get whsub -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
    [ "$ready" -ge "$SUBS" ] && break
    awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { exit !(n - s > 600) }' && { log "only $ready of $SUBS Ready after 600 s"; exit 1; }
    sleep 1
  done
  seconds=$(awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
  after=$(api_requests); hl_after=$(hookline_requests)
  rss=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$HL/status")
  curl -fsS "http://127.0.0.1:$METRICS/metrics" | grep '^hookline_api_requests_total' | sed 's/^/[bench] since start: /' >&2
  printf '{"subscriptions": %d, "all_ready_s": %s, "rss_mb": %s, "api_requests_total": %d, "hookline_api_requests": %d, "hookline_api_requests_per_subscription": %.2f}\n' \
    "$SUBS" "$seconds" "$rss" "$((after - before))" "$((hl_after - hl_before))" \
    "$(awk -v d="$((hl_after - hl_before))" -v n="$SUBS" 'BEGIN { print d / n }')"
  exit 0
fi

kubectl create namespace bench1 >/dev/null
kubectl create namespace bench10 >/dev/null
{ subscription bench1 one; for i in $(seq 1 10); do subscription bench10 "ten-$i"; done; } >"$WORK/subs.yaml"
"$BIN/hookline-bench" --receive-only --receiver-port "$RECEIVER" &
RX=$!
kubectl apply -f "$WORK/subs.yaml" >/dev/null
kubectl -n bench1 wait --for=condition=Ready whsub --all --timeout=120s >/dev/null
kubectl -n bench10 wait --for=condition=Ready whsub --all --timeout=120s >/dev/null
kill "$RX"; wait "$RX" 2>/dev/null || true
log "measuring: ${SECONDS_PER}s per phase, $CONC publishers, latency at ${RATE}/s"
"$BIN/hookline-bench" --ingest "http://127.0.0.1:$INGEST" --metrics "http://127.0.0.1:$METRICS" --pid "$HL" \
  --ns1 bench1 --ns10 bench10 --receiver-port "$RECEIVER" --seconds "$SECONDS_PER" --concurrency "$CONC" --rate "$RATE" \
  ${BENCH_PHASES:+--phases "$BENCH_PHASES"} ${BENCH_RANDOM_IDS:+--random-ids}
