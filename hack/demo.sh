#!/usr/bin/env bash
# Hookline's main job, end to end, on the local control plane:
# a producer's ServiceAccount publishes CloudEvents (binary, structured, batch); Hookline stores
# them, signs them and delivers them to a local receiver that checks each signature; then the
# subscription's status and delivery log are shown. Everything is cleaned up at the end.
# `hack/demo.sh --helm`: the same as users run it, the chart's pods on a real node (hack/demo-helm.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${1:-}" = --helm ]; then exec hack/demo-helm.sh; fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# shellcheck source=hack/lib.sh
. hack/lib.sh

say "Starting the local Kubernetes control plane and installing the CRDs (the first run builds it from Debian's source, ≈10 min)"
session demo

say "Building Hookline"
cargo build --quiet --bin hookline
HOOKLINE="$ROOT/target/debug/hookline"

kubectl create namespace shop >/dev/null

INGEST=$(free_port); METRICS=$(free_port); RECEIVER=$(free_port)
say "Starting Hookline (ingest on 127.0.0.1:$INGEST; log in $WORK/hookline.log)"
"$HOOKLINE" run --data-dir "$WORK/data" --ingest-addr "127.0.0.1:$INGEST" --metrics-addr "127.0.0.1:$METRICS" \
  --allow-http --allow-cidr 127.0.0.0/8 --public-url "http://127.0.0.1:$INGEST" --status-interval 1s \
  >"$WORK/hookline.log" 2>&1 &
PIDS+=($!)
wait_ready "$METRICS" "${PIDS[0]}" "$WORK/hookline.log"

say "Subscribing a local receiver to order.* events (it answers the ownership handshake)"
DEMO_SECRET_FILE="$WORK/secret" python3 hack/demo-receiver.py "$RECEIVER" >"$WORK/received.log" 2>&1 &
PIDS+=($!)
kubectl -n shop apply -f - >/dev/null <<YAML
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata:
  name: orders
spec:
  eventTypes: ["order.*"]
  endpoint:
    url: http://127.0.0.1:$RECEIVER/webhooks   # plain http on loopback: --allow-http --allow-cidr, local only
YAML
kubectl -n shop wait --for=condition=Ready whsub/orders --timeout=60s >/dev/null
kubectl -n shop get secret orders-signing -o jsonpath='{.data.signingSecret}' | base64 -d >"$WORK/secret"
kubectl -n shop get whsub orders
kubectl -n shop get whsub orders -o jsonpath='{range .status.conditions[*]}  {.type}={.status} ({.reason}): {.message}{"\n"}{end}'

say "A producer ServiceAccount may publish in namespace shop (plain RBAC)"
kubectl -n shop create serviceaccount producer >/dev/null
kubectl -n shop apply -f - >/dev/null <<YAML
# Publishing is create on events.hookline.dev; reading the delivery log is get on the subscription.
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: producer}
rules:
- apiGroups: [hookline.dev]
  resources: [events]
  verbs: [create]
- apiGroups: [hookline.dev]
  resources: [webhooksubscriptions]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: producer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: producer}
subjects: [{kind: ServiceAccount, name: producer, namespace: shop}]
YAML
TOKEN=$(kubectl -n shop create token producer)
URL="http://127.0.0.1:$INGEST/v1/namespaces/shop/events"

say "Publishing: binary mode, structured mode, and a batch of three"
curl -fsS "$URL" -H "Authorization: Bearer $TOKEN" -H 'ce-specversion: 1.0' -H 'ce-id: ord-1' \
  -H 'ce-source: /shop/checkout' -H 'ce-type: order.created' -H 'content-type: application/json' \
  -d '{"order": 1, "total": 42.5}'; echo
curl -fsS "$URL" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/cloudevents+json' \
  -d '{"specversion":"1.0","id":"ord-2","source":"/shop/checkout","type":"order.paid","data":{"order":1}}'; echo
curl -fsS "$URL" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/cloudevents-batch+json' -d '[
  {"specversion":"1.0","id":"ord-3","source":"/shop/checkout","type":"order.created","data":{"order":2}},
  {"specversion":"1.0","id":"ord-4","source":"/shop/checkout","type":"order.shipped","data":{"order":1}},
  {"specversion":"1.0","id":"inv-1","source":"/shop/billing","type":"invoice.sent","data":{"invoice":9}}]'; echo
echo "  (invoice.sent matches no subscription: matched 0)"
echo "  A token without the Role is refused:"
kubectl -n shop create serviceaccount stranger >/dev/null
curl -sS "$URL" -H "Authorization: Bearer $(kubectl -n shop create token stranger)" \
  -H 'content-type: application/cloudevents+json' \
  -d '{"specversion":"1.0","id":"x","source":"/x","type":"order.created"}' -w '  (HTTP %{http_code})\n'

say "Deliveries at the receiver"
for _ in $(seq 1 100); do [ "$(grep -c received "$WORK/received.log")" -ge 4 ] && break; sleep 0.2; done
cat "$WORK/received.log"

say "The subscription, as kubectl shows it"
for _ in $(seq 1 50); do
  [ "$(kubectl -n shop get whsub orders -o jsonpath='{.status.deliveryStats.delivered}')" = 4 ] && break; sleep 0.2
done
kubectl -n shop get whsub orders
kubectl -n shop get whsub orders -o jsonpath='{.status.deliveryStats}'; echo

say "The delivery log (GET .../webhooksubscriptions/orders/deliveries)"
curl -fsS "http://127.0.0.1:$INGEST/v1/namespaces/shop/webhooksubscriptions/orders/deliveries?limit=10" \
  -H "Authorization: Bearer $TOKEN" | python3 -m json.tool

say "Done; cleaning up"
