#!/usr/bin/env bash
# Regenerates the Argo CD health checks' test data from real objects: a private control plane, a
# debug Hookline and a receiver that answers by path (/ok, /fail: 500, /gone: 410, /silent: never
# answers the handshake). Each subscription is driven into one state and saved with the status
# Hookline wrote (managedFields dropped). Run from anywhere: integrations/argocd/capture-testdata.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=hack/lib.sh
. hack/lib.sh
OUT=integrations/argocd/hookline.dev
log() { printf '[capture] %s\n' "$*" >&2; }
session argocd-capture
cargo build --quiet --bin hookline
NS=shop
kubectl create namespace "$NS" >/dev/null
INGEST=$(free_port); METRICS=$(free_port); RECEIVER=$(free_port)
target/debug/hookline run --data-dir "$WORK/data" --ingest-addr "127.0.0.1:$INGEST" --metrics-addr "127.0.0.1:$METRICS" \
  --ingest-auth none --allow-http --allow-cidr 127.0.0.0/8 --public-url "http://127.0.0.1:$INGEST" \
  --status-interval 1s >"$WORK/hookline.log" 2>&1 &
HL=$!; PIDS+=($HL)
wait_ready "$METRICS" "$HL" "$WORK/hookline.log"
python3 - "$RECEIVER" >"$WORK/receiver.log" 2>&1 <<'PY' &
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("ce-type") == "dev.hookline.subscription.validation":
            if self.path == "/silent":
                self.send_response(200); self.end_headers(); return
            answer = json.dumps({"validationResponse": json.loads(body)["validationCode"]}).encode()
            self.send_response(200); self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer))); self.end_headers(); self.wfile.write(answer); return
        self.send_response({"/fail": 500, "/gone": 410}.get(self.path, 200)); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
PIDS+=($!)

sub() { # name path [extra spec lines]
  printf 'apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: %s, namespace: %s}\nspec:\n  eventTypes: ["order.*"]\n  endpoint: {url: "http://127.0.0.1:%s%s"}\n  retryPolicy: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}\n%s\n---\n' \
    "$1" "$NS" "$RECEIVER" "$2" "${3:-}"
}
{
  sub healthy /ok
  sub pending /silent
  sub suspended /ok "  suspend: true"
  sub failing /fail
  sub gone /gone
  sub expiring /ok "  expiresAt: \"$(date -u -d '+20 seconds' +%Y-%m-%dT%H:%M:%SZ)\""
  sub unverified /ok "  validation: {method: None}"
  sub blocked "" | sed "s|http://127.0.0.1:$RECEIVER|http://169.254.169.254/hook|"
  sub nosecret /ok "  signing: {secretRef: {name: missing-secret}}"
  sub changed /ok
} | kubectl apply -f - >/dev/null
event_type() { # name type schema [example]
  printf 'apiVersion: hookline.dev/v1alpha1\nkind: EventType\nmetadata: {name: %s, namespace: %s}\nspec:\n  type: %s\n  description: "Something happened to a payment."\n  schema: %s\n%s\n---\n' \
    "$1" "$NS" "$2" "$3" "${4:+  example: $4}"
}
ORDER='{type: object, required: [amount], properties: {amount: {type: number, minimum: 0}}}'
event_type payment payment.received "$ORDER" '{amount: 12.5}' | kubectl apply -f - >/dev/null
{
  event_type payment-again payment.received "$ORDER"
  event_type invalid-schema payment.failed '{type: nonsense}'
  event_type invalid-example payment.disputed "$ORDER" '{amount: "twelve"}'
  event_type stale payment.refunded "$ORDER"
} | kubectl apply -f - >/dev/null
publish() {
  curl -fsS -o /dev/null -X POST "http://127.0.0.1:$INGEST/v1/namespaces/$NS/events" -H 'content-type: application/cloudevents+json' \
    -d "{\"specversion\":\"1.0\",\"id\":\"$1\",\"source\":\"/capture\",\"type\":\"order.created\",\"data\":{\"order\":1}}"
}
cond() { kubectl -n "$NS" get whsub "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].reason}"; }
wait_for() { # name condition reason
  for _ in $(seq 1 300); do [ "$(cond "$1" "$2")" = "$3" ] && return 0; sleep 0.2; done
  log "$1: $2 never became $3 (now $(cond "$1" "$2"))"; exit 1
}
wait_for healthy Ready Active
wait_for changed Ready Active
publish e1; publish e2
wait_for healthy Healthy Delivering
wait_for failing Healthy DeliveryFailing
wait_for gone Ready Disabled
wait_for pending Ready AwaitingValidation
wait_for suspended Ready Suspended
wait_for unverified Ready InvalidSpec
wait_for blocked EndpointVerified EndpointBlocked
wait_for nosecret Ready SigningSecretMissing
wait_for expiring Ready Expired
for _ in $(seq 1 300); do kubectl -n "$NS" get failedevents -o name | grep -q . && break; sleep 0.2; done
et_cond() { kubectl -n "$NS" get eventtype "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'; }
for et in payment:Valid payment-again:DuplicateType invalid-schema:InvalidSchema invalid-example:InvalidExample stale:Valid; do
  for _ in $(seq 1 300); do [ "$(et_cond "${et%%:*}")" = "${et#*:}" ] && break; sleep 0.2; done
  [ "$(et_cond "${et%%:*}")" = "${et#*:}" ] || { log "${et%%:*}: Ready never became ${et#*:}"; exit 1; }
done

save() { # kind name file
  mkdir -p "$OUT/$1/testdata"
  kubectl -n "$NS" get "$1.hookline.dev" "$2" -o json | python3 -c '
import json, sys
o = json.load(sys.stdin)
for k in ("managedFields", "resourceVersion", "uid"):
    o["metadata"].pop(k, None)
o["metadata"].get("annotations", {}).pop("kubectl.kubernetes.io/last-applied-configuration", None)
if not o["metadata"].get("annotations"):
    o["metadata"].pop("annotations", None)
print(json.dumps(o, indent=2))' | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin), indent=2))' >"$OUT/$1/testdata/$3.json"
}
for s in healthy failing gone pending suspended unverified blocked nosecret expiring; do save WebhookSubscription "$s" "$s"; done
save EventType payment valid
save EventType payment-again duplicate-type
save EventType invalid-schema invalid-schema
save EventType invalid-example invalid-example
# The spec changed while Hookline is stopped: the status describes the previous generation.
kill "$HL"; wait "$HL" 2>/dev/null || true
kubectl -n "$NS" patch whsub changed --type merge -p '{"spec":{"eventTypes":["order.*","invoice.*"]}}' >/dev/null
save WebhookSubscription changed generation-not-observed
kubectl -n "$NS" patch eventtype stale --type merge -p '{"spec":{"description":"A refund was made."}}' >/dev/null
save EventType stale generation-not-observed
failed_event() { kubectl -n "$NS" get failedevents -l "hookline.dev/subscription=$1" -o jsonpath='{.items[0].metadata.name}'; }
for _ in $(seq 1 300); do [ -n "$(failed_event gone)" ] && break; sleep 0.2; done
fe=$(failed_event failing); fe_gone=$(failed_event gone)
save FailedEvent "$fe" dead-lettered
# Replays requested while Hookline is down run once it is back: the failing endpoint fails the
# event again; the subscription whose endpoint answered 410 is disabled, so its replay cannot run.
kubectl -n "$NS" annotate failedevent "$fe" "$fe_gone" hookline.dev/replay=true >/dev/null
target/debug/hookline run --data-dir "$WORK/data" --ingest-addr "127.0.0.1:$INGEST" --metrics-addr "127.0.0.1:$METRICS" \
  --ingest-auth none --allow-http --allow-cidr 127.0.0.0/8 --public-url "http://127.0.0.1:$INGEST" \
  --status-interval 1s >>"$WORK/hookline.log" 2>&1 &
HL=$!; PIDS+=($HL)
replay() { kubectl -n "$NS" get failedevent "$1" -o jsonpath='{.status.replay.outcome}'; }
for name in "$fe" "$fe_gone"; do
  for _ in $(seq 1 300); do case "$(replay "$name")" in ""|Pending) sleep 0.2 ;; *) break ;; esac; done
done
[ "$(replay "$fe")" = Failed ] || { log "the replay did not fail (now $(replay "$fe"))"; exit 1; }
save FailedEvent "$fe" replay-failed
save FailedEvent "$fe_gone" replay-subscription-disabled
log "saved to $OUT"
