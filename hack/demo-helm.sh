#!/usr/bin/env bash
# Hookline's main job as users run it (hack/demo.sh --helm): the local cluster with a real node,
# Hookline's image built from the Dockerfile, installed with the Helm chart as pods; a receiver
# pod (checking each signature) subscribed; a producer pod publishing with its ServiceAccount
# through the ingest Service. Needs root (the node). Everything is removed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# shellcheck source=hack/lib.sh
. hack/lib.sh

say "Starting the local cluster with one node (the first run builds Kubernetes from Debian's source, ≈10 min)"
session demo-helm --node

say "Building Hookline's image from the Dockerfile (release build: a few minutes the first time)"
IMAGE=$(hack/image.sh | tail -n 1)
TOOLS=$(hack/image.sh tools | tail -n 1)
echo "  $IMAGE (and $TOOLS for the demo's pods)"

say "helm install hookline charts/hookline --namespace hookline"
# The receiver is a pod reached over plain http: allow that network (values a user with in-cluster
# receivers sets too); the image was imported into the node, so it is never pulled.
hack/helm.sh install hookline charts/hookline --namespace hookline --create-namespace --wait --timeout 4m \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set delivery.allowHttp=true --set 'delivery.allowedCidrs={10.244.0.0/24}' >/dev/null
kubectl -n hookline get pods,pvc,svc

say "A receiver pod in namespace shop, subscribed to order.* (it answers the ownership handshake)"
kubectl create namespace shop >/dev/null
until kubectl -n shop get serviceaccount default >/dev/null 2>&1; do sleep 0.2; done
kubectl -n shop create secret generic orders-signing \
  --from-literal=signingSecret="whsec_$(openssl rand -base64 32)" >/dev/null
kubectl -n shop apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: receiver}
spec:
  containers:
  - name: receiver
    image: $TOOLS
    imagePullPolicy: Never
    command: [python3, -u, /hack/demo-receiver.py, "8080", 0.0.0.0]
    env: [{name: DEMO_SECRET_FILE, value: /secret/signingSecret}]
    volumeMounts: [{name: hack, mountPath: /hack, readOnly: true}, {name: secret, mountPath: /secret, readOnly: true}]
  volumes:
  - {name: hack, hostPath: {path: $ROOT/hack, type: Directory}}
  - {name: secret, secret: {secretName: orders-signing}}
YAML
kubectl -n shop wait --for=condition=Ready pod/receiver --timeout=120s >/dev/null
RECEIVER_IP=$(kubectl -n shop get pod receiver -o jsonpath='{.status.podIP}')
kubectl -n shop apply -f - >/dev/null <<YAML
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {name: orders}
spec:
  eventTypes: ["order.*"]
  endpoint: {url: "http://$RECEIVER_IP:8080/webhooks"}
  signing: {secretRef: {name: orders-signing}}
YAML
kubectl -n shop wait --for=condition=Ready whsub/orders --timeout=90s >/dev/null
kubectl -n shop get whsub orders

say "A producer pod publishes as ServiceAccount shop/producer, through the ingest Service"
kubectl -n shop create serviceaccount producer >/dev/null
kubectl -n shop create rolebinding producer --clusterrole=hookline-publisher --serviceaccount=shop:producer >/dev/null
until [ -n "$(kubectl -n shop get serviceaccount producer -o jsonpath='{.secrets}' 2>/dev/null)" ]; do sleep 0.2; done
kubectl -n shop apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: producer}
spec:
  serviceAccountName: producer
  containers: [{name: producer, image: $TOOLS, imagePullPolicy: Never, command: [sleep, infinity]}]
YAML
kubectl -n shop wait --for=condition=Ready pod/producer --timeout=120s >/dev/null
# No cluster DNS on the test node (elsewhere: http://hookline-ingest.hookline.svc:8080): the
# Service's cluster IP, which kube-proxy routes to the Hookline pod.
INGEST=$(kubectl -n hookline get service hookline-ingest -o jsonpath='{.spec.clusterIP}:{.spec.ports[0].port}')
kubectl -n shop exec producer -- env INGEST="$INGEST" sh -ec '
  URL="http://$INGEST/v1/namespaces/shop/events"
  TOKEN=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)
  curl -fsS "$URL" -H "Authorization: Bearer $TOKEN" -H "ce-specversion: 1.0" -H "ce-id: ord-1" \
    -H "ce-source: /shop/checkout" -H "ce-type: order.created" -H "content-type: application/json" \
    -d "{\"order\": 1}"; echo
  curl -fsS "$URL" -H "Authorization: Bearer $TOKEN" -H "content-type: application/cloudevents+json" \
    -d "{\"specversion\":\"1.0\",\"id\":\"ord-2\",\"source\":\"/shop/checkout\",\"type\":\"order.paid\",\"data\":{\"order\":1}}"; echo'

say "Deliveries at the receiver pod (kubectl logs receiver)"
for _ in $(seq 1 100); do [ "$(kubectl -n shop logs receiver | grep -c received)" -ge 2 ] && break; sleep 0.2; done
kubectl -n shop logs receiver

say "The subscription, as kubectl shows it"
for _ in $(seq 1 50); do
  [ "$(kubectl -n shop get whsub orders -o jsonpath='{.status.deliveryStats.delivered}')" = 2 ] && break; sleep 0.2
done
kubectl -n shop get whsub orders
say "Hookline's log (kubectl -n hookline logs deployment/hookline, last lines)"
kubectl -n hookline logs deployment/hookline | tail -n 5

say "Done; removing the cluster and its node"
