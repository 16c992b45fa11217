#!/usr/bin/env bash
# Hookline's benchmarks on loopback (release build, bounded in time). See BENCHMARKS.md.
#
#   hack/bench.sh            throughput and latency; the last line is one JSON object: per
#                            saturation phase deliveries/s, the publish's answer time and CPU s
#                            per 1,000 deliveries (`cpu_s_per_1000_single`, …), and the same CPU
#                            figure at 200 and at BENCH_RATE events/s (`cpu_s_per_1000_at_200`,
#                            `cpu_s_per_1000_at_1000`), with `cpu_s_per_1000` over the whole run
#   hack/bench.sh --smoke    the same, a few seconds long (CI checks the script still works)
#   hack/bench.sh --scale    1,000 subscriptions: time until all are Ready, peak RSS, API requests;
#                            then a minute of events to all of them: PATCH rate, status staleness
#   --store postgres         (with any of the above) the PostgreSQL store, on a throwaway server
#                            (hack/postgres.sh); default sqlite
#   --replicas N             (with --store postgres) N Hooklines sharing it; publishers take them
#                            in turn; RSS is the largest replica's, CPU the sum
#   --failover               (with --store postgres --replicas 2 or more) events flow to ten
#                            subscriptions through replicas 2..N while replica 1 gets `kill -9`:
#                            the longest time from the kill to a subscription's next delivery
#
# Env: BENCH_SECONDS (per phase, default 10), BENCH_RATE (offered load, default 1000/s),
# BENCH_LATENCY_SECONDS (the latency phase's length, default BENCH_SECONDS),
# BENCH_CONCURRENCY (publishers, default 32), BENCH_SUBS (for --scale, default 1000),
# BENCH_DELIVERY_SECONDS / BENCH_DELIVERY_RATE (--scale's delivery phase, default 60 s at 2 events/s),
# BENCH_PHASES (of direct, single, batch, fanout10, latency200, latency, and two not run by
# default: slow, the latency phase while 3,000 slow clients from 127.0.0.2-5 try to hold the
# ingest port, and neighbour, 200 events/s while another namespace floods an endpoint that never
# answers; e.g. "direct,batch": only these phases, for profiling one of them),
# BENCH_SEQUENTIAL_IDS=1 (event ids that count up instead of UUIDs; the JSON line says which),
# BENCH_ORDERING (the subscriptions' delivery.ordering, default Unordered) and BENCH_KEYS (events
# carry a partitionkey, one of this many in turn; default none),
# BENCH_LATENCY_TRACE=FILE (the latency phase second by second: events, how many took over 10 ms,
# p50, p99, the slowest and when it was published, the host's CPU busy/stolen/iowait % and disk
# writes per second and in flight),
# BENCH_LEASE (--failover: the replicas' --lease-duration, default Hookline's 45s; offered load
# default 100 events/s, each to ten subscriptions),
# BENCH_HOOKLINE=PATH (measure that hookline binary instead of this tree's, with this tree's load
# generator: an A/B against an older commit's release build; its JSON line says "hookline": PATH).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODE=full; STORE=sqlite; REPLICAS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke|--scale|--failover) MODE=$1 ;;
    --store) STORE=${2:?--store needs sqlite or postgres}; shift ;;
    --replicas) REPLICAS=${2:?--replicas needs a number}; shift ;;
    *) echo "usage: $0 [--smoke|--scale|--failover] [--store sqlite|postgres] [--replicas N]" >&2; exit 2 ;;
  esac
  shift
done
case "$STORE" in sqlite|postgres) ;; *) echo "--store: sqlite or postgres" >&2; exit 2 ;; esac
[ "$STORE" = postgres ] || [ "$REPLICAS" = 1 ] || { echo "--replicas needs --store postgres" >&2; exit 2; }
[ "$MODE" != --failover ] || [ "$REPLICAS" -ge 2 ] || { echo "--failover needs --store postgres --replicas 2 (or more)" >&2; exit 2; }
ORDERING=${BENCH_ORDERING:-Unordered}; KEYS=${BENCH_KEYS:-0}
SECONDS_PER=${BENCH_SECONDS:-10}; RATE=${BENCH_RATE:-1000}; CONC=${BENCH_CONCURRENCY:-32}; SUBS=${BENCH_SUBS:-1000}
DELIVERY_S=${BENCH_DELIVERY_SECONDS:-60}; DELIVERY_RATE=${BENCH_DELIVERY_RATE:-2}
PROFILE=release
if [ "$MODE" = "--smoke" ]; then SECONDS_PER=2; RATE=100; CONC=4; SUBS=20; PROFILE=dev; fi
if [ "$MODE" = "--failover" ]; then RATE=${BENCH_RATE:-100}; fi
LEASE=${BENCH_LEASE:-45s}

log() { printf '[bench] %s\n' "$*" >&2; }
# shellcheck source=hack/lib.sh
. hack/lib.sh
session bench
log "building ($PROFILE)"
cargo build --quiet --profile "$PROFILE" --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$([ "$PROFILE" = dev ] && echo debug || echo release)"
HOOKLINE=${BENCH_HOOKLINE:-$BIN/hookline}

STORE_ARGS=(--data-dir "$WORK/data")
if [ "$STORE" = postgres ]; then
  export HOOKLINE_POSTGRES_DIR="$WORK/postgres"
  trap 'hack/postgres.sh down >/dev/null 2>&1 || true; session_cleanup' EXIT
  eval "$(hack/postgres.sh up | tail -n 1)"
  STORE_ARGS=(--store postgres --database-url "$HOOKLINE_DATABASE_URL")
fi
replica() { [ "$STORE" = sqlite ] || echo "--replica-name=bench-$1 --lease-duration=$LEASE"; }
RECEIVER=$(free_port); INGESTS=(); METRICSES=(); HLS=()
for r in $(seq 1 "$REPLICAS"); do
  INGEST=$(free_port); METRICS=$(free_port)
  # shellcheck disable=SC2046
  "$HOOKLINE" run "${STORE_ARGS[@]}" $(replica "$r") \
    --ingest-addr "127.0.0.1:$INGEST" --metrics-addr "127.0.0.1:$METRICS" \
    --ingest-auth none --allow-http --allow-cidr 127.0.0.0/8 --public-url "http://127.0.0.1:$INGEST" \
    --status-interval 5s --allow-unverified-endpoints --log-format json >"$WORK/hookline-$r.log" 2>&1 &
  HL=$!; PIDS+=($HL)
  wait_ready "$METRICS" "$HL" "$WORK/hookline-$r.log"
  INGESTS+=("http://127.0.0.1:$INGEST"); METRICSES+=("http://127.0.0.1:$METRICS"); HLS+=("$HL")
done
# The first replica's, for --scale (which measures one replica).
INGEST=${INGESTS[0]#http://127.0.0.1:}; METRICS=${METRICSES[0]#http://127.0.0.1:}; HL=${HLS[0]}
join() { local IFS=,; echo "$*"; }
# The result line says which store and how many replicas it measured.
labelled() { sed "s|^{|{\"store\": \"$STORE\", \"replicas\": $REPLICAS, ${BENCH_HOOKLINE:+\"hookline\": \"$BENCH_HOOKLINE\", }|"; }

subscription() { # namespace name
  printf 'apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: %s, namespace: %s}\nspec:\n  eventTypes: ["*"]\n  endpoint: {url: "http://127.0.0.1:%s/hook/%s"}\n  delivery: {maxConcurrency: 64, ordering: %s}\n---\n' "$2" "$1" "$RECEIVER" "$2" "$ORDERING"
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

  # Delivery phase: every subscription busy for DELIVERY_S seconds (each event fans out to all of
  # them); Hookline's PATCH rate and how old the subscriptions' status.lastDelivery gets.
  # One more subscription whose endpoint refuses connections: how soon its Healthy=False shows
  # while the others keep the status writer busy.
  printf 'apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: broken, namespace: scale}\nspec:\n  eventTypes: ["*"]\n  endpoint: {url: "http://127.0.0.1:%s/closed"}\n  validation: {method: None}\n' "$(free_port)" |
    kubectl apply -f - >/dev/null
  kubectl -n scale wait --for=condition=Ready whsub/broken --timeout=60s >/dev/null
  healthy_broken() { kubectl -n scale get whsub broken -o jsonpath='{.status.conditions[?(@.type=="Healthy")].status}'; }
  log "delivery phase: ${DELIVERY_S}s, ${DELIVERY_RATE} events/s to all $SUBS subscriptions"
  metric() { curl -fsS "http://127.0.0.1:$METRICS/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
  patches() { metric 'hookline_api_requests_total{method="PATCH"}'; }
  sleep 6 # the Ready writes and the first delivery writes of the phase before are not counted
  patch_before=$(patches); phase_start=$(date +%s.%N); sent=0; worst_gauge=0; broken_s=null
  while awk -v s="$phase_start" -v n="$(date +%s.%N)" -v d="$DELIVERY_S" 'BEGIN { exit !(n - s < d) }'; do
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$INGEST/v1/namespaces/scale/events" \
      -H 'content-type: application/cloudevents+json' \
      -d "{\"specversion\":\"1.0\",\"id\":\"scale-$sent\",\"source\":\"/bench\",\"type\":\"t\",\"data\":{}}"
    sent=$((sent + 1))
    if [ "$broken_s" = null ] && [ "$(healthy_broken)" = False ]; then
      broken_s=$(awk -v s="$phase_start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
    fi
    if [ $((sent % DELIVERY_RATE)) -eq 0 ]; then
      worst_gauge=$(awk -v a="$worst_gauge" -v b="$(metric hookline_status_staleness_seconds)" 'BEGIN { print (b > a ? b : a) }')
    fi
    sleep "$(awk -v r="$DELIVERY_RATE" 'BEGIN { print 1 / r }')"
  done
  phase_s=$(awk -v s="$phase_start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
  patch_after=$(patches)
  # How old each subscription's lastDelivery is while events still flow (they did until now).
  now_s=$(date +%s)
  worst_last=$(kubectl -n scale get whsub -o jsonpath='{range .items[*]}{.metadata.name} {.status.lastDelivery.time}{"\n"}{end}' |
    awk '$1 != "broken" { print $2 }' |
    while read -r t; do
      # Never written since the phase began: as old as the phase.
      if [ -n "$t" ]; then echo $((now_s - $(date -d "$t" +%s))); else echo $((now_s - ${phase_start%.*})); fi
    done | sort -n | tail -n 1)
  deferred=$(metric hookline_status_writes_deferred_total); deferred=${deferred:-0}
  printf '{"subscriptions": %d, "all_ready_s": %s, "rss_mb": %s, "api_requests_total": %d, "hookline_api_requests": %d, "hookline_api_requests_per_subscription": %.2f, "delivery_s": %s, "events": %d, "patch_per_s": %.2f, "worst_last_delivery_age_s": %s, "worst_staleness_gauge_s": %s, "status_writes_deferred": %s, "unhealthy_visible_s": %s}\n' \
    "$SUBS" "$seconds" "$rss" "$((after - before))" "$((hl_after - hl_before))" \
    "$(awk -v d="$((hl_after - hl_before))" -v n="$SUBS" 'BEGIN { print d / n }')" \
    "$phase_s" "$sent" "$(awk -v a="$patch_before" -v b="$patch_after" -v s="$phase_s" 'BEGIN { print (b - a) / s }')" \
    "$worst_last" "$worst_gauge" "$deferred" "$broken_s" | labelled
  exit 0
fi

kubectl create namespace bench1 >/dev/null
kubectl create namespace bench10 >/dev/null
kubectl create namespace benchflood >/dev/null
{
  subscription bench1 one; for i in $(seq 1 10); do subscription bench10 "ten-$i"; done
  # The neighbour phase's flooded namespace: an endpoint that never answers, given up on after 5 s.
  printf 'apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: flood, namespace: benchflood}\nspec:\n  eventTypes: ["*"]\n  endpoint: {url: "http://127.0.0.1:%s/hang/flood", timeoutSeconds: 5}\n' "$RECEIVER"
} >"$WORK/subs.yaml"
"$BIN/hookline-bench" --receive-only --receiver-port "$RECEIVER" &
RX=$!
kubectl apply -f "$WORK/subs.yaml" >/dev/null
kubectl -n bench1 wait --for=condition=Ready whsub --all --timeout=120s >/dev/null
kubectl -n bench10 wait --for=condition=Ready whsub --all --timeout=120s >/dev/null
kubectl -n benchflood wait --for=condition=Ready whsub --all --timeout=120s >/dev/null
kill "$RX"; wait "$RX" 2>/dev/null || true
if [ "$MODE" = "--failover" ]; then
  log "fail-over: ${RATE} events/s to ten subscriptions through replicas 2..$REPLICAS; replica 1 gets kill -9 (lease $LEASE)"
  "$BIN/hookline-bench" --ingest "$(join "${INGESTS[@]:1}")" --metrics "$(join "${METRICSES[@]:1}")" --pid "$(join "${HLS[@]:1}")" \
    --ns10 bench10 --receiver-port "$RECEIVER" --rate "$RATE" --phases failover --kill "${HLS[0]}" |
    sed "s/^{/{\"lease\": \"$LEASE\", /" | labelled
  exit 0
fi
log "measuring: ${SECONDS_PER}s per phase, $CONC publishers, latency at ${RATE}/s"
"$BIN/hookline-bench" --ingest "$(join "${INGESTS[@]}")" --metrics "$(join "${METRICSES[@]}")" --pid "$(join "${HLS[@]}")" \
  --ns1 bench1 --ns10 bench10 --ns-flood benchflood --receiver-port "$RECEIVER" --seconds "$SECONDS_PER" --concurrency "$CONC" --rate "$RATE" \
  --partition-keys "$KEYS" ${BENCH_PHASES:+--phases "$BENCH_PHASES"} ${BENCH_SEQUENTIAL_IDS:+--sequential-ids} \
  ${BENCH_LATENCY_SECONDS:+--latency-seconds "$BENCH_LATENCY_SECONDS"} ${BENCH_LATENCY_TRACE:+--latency-trace "$BENCH_LATENCY_TRACE"} |
  sed "s/^{/{\"ordering\": \"$ORDERING\", /" | labelled
