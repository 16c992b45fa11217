#!/usr/bin/env bash
# Soak (not in CI): mixed traffic against a receiver that fails at random, for a given duration,
# sampling Hookline's RSS, open file descriptors and queue depth over time.
#
#   hack/soak.sh [MINUTES]     default 30; prints one sample line every 30 s and a summary
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MINUTES=${1:-30}
# shellcheck source=hack/lib.sh
. hack/lib.sh
session soak
cargo build --quiet --release --bin hookline
INGEST=$(free_port); METRICS=$(free_port); RECEIVER=$(free_port)
python3 hack/soak.py receiver "$RECEIVER" 0.2 &
PIDS+=($!)
target/release/hookline run --data-dir "$WORK/data" --ingest-addr "127.0.0.1:$INGEST" \
  --metrics-addr "127.0.0.1:$METRICS" --ingest-auth none --allow-http --allow-cidr 127.0.0.0/8 \
  --public-url "http://127.0.0.1:$INGEST" --log-format json --failed-event-cap 200 --failed-event-ttl 10m \
  >"$WORK/hookline.log" 2>&1 &
HL=$!; PIDS+=($HL)
wait_ready "$METRICS" "$HL" "$WORK/hookline.log"
kubectl create namespace soak >/dev/null
for name in one two three; do
  printf 'apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: %s, namespace: soak}\nspec:\n  eventTypes: ["soak.*"]\n  endpoint: {url: "http://127.0.0.1:%s/hook"}\n  retryPolicy: {maxAttempts: 5, initialBackoff: 1s, maxBackoff: 10s, eventTTL: 5m}\n' "$name" "$RECEIVER" | kubectl apply -f - >/dev/null
done
kubectl -n soak wait --for=condition=Ready whsub --all --timeout=60s >/dev/null
python3 hack/soak.py publish "http://127.0.0.1:$INGEST/v1/namespaces/soak/events" 50 "$((MINUTES * 60))" >"$WORK/publish.json" &
PUB=$!
printf '%-8s %-8s %-6s %-8s %-10s %-10s\n' minute rss_mb fds queue delivered failed_evs
end=$((SECONDS + MINUTES * 60))
while [ $SECONDS -lt "$end" ]; do
  sleep 30
  rss=$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$HL/status")
  fds=$(ls "/proc/$HL/fd" | wc -l)
  metrics=$(curl -fs "http://127.0.0.1:$METRICS/metrics")
  queue=$(echo "$metrics" | awk '/^hookline_queue_depth/ { s += $NF } END { printf "%d", s }')
  delivered=$(echo "$metrics" | awk '/^hookline_deliveries_total\{.*outcome="success"/ { s += $NF } END { printf "%d", s }')
  fevs=$(kubectl -n soak get fev --no-headers 2>/dev/null | wc -l)
  printf '%-8s %-8s %-6s %-8s %-10s %-10s\n' "$(( (SECONDS - end + MINUTES * 60) / 60 ))" "$rss" "$fds" "$queue" "$delivered" "$fevs"
done
wait "$PUB" || true
cat "$WORK/publish.json"
echo "peak RSS: $(awk '/VmHWM/ { printf "%.1f MB", $2 / 1024 }' "/proc/$HL/status")"
