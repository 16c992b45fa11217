#!/usr/bin/env bash
# Local Kubernetes control plane for Hookline development and tests.
#
#   hack/cluster.sh up      build (first use only) and start etcd + kube-apiserver +
#                           kube-controller-manager (1.20) with the CEL-enforcing CRD server
#                           (1.36) behind it, on free loopback ports; the last line printed is
#                           `export KUBECONFIG=…`
#   hack/cluster.sh up --node
#                           the same plus one real node (hack/node.sh: containerd, kubelet,
#                           kube-proxy, kube-scheduler, a default StorageClass), so pods run; the
#                           API server then listens on the node's bridge address (10.244.0.1),
#                           where pods reach it through the `kubernetes` Service. Needs root.
#   hack/cluster.sh down    stop exactly what `up` started (the node too) and remove its state
#   hack/cluster.sh status  say whether the control plane is running
#   hack/cluster.sh env     print the `export KUBECONFIG=…` line of a running control plane
#   hack/cluster.sh apiserver-stop | apiserver-start
#                           stop / start only kube-apiserver (same port; etcd keeps the data)
#
# One cluster, two API servers (see docs/development.md, "Tested against"): Kubernetes 1.20.2, built from
# Debian's `kubernetes` source package, serves the core APIs, RBAC, TokenReview and
# SubjectAccessReview, and runs garbage collection, namespace deletion and ResourceQuota usage;
# behind it, as an aggregated API, k8s.io/apiextensions-apiserver 1.36 (hack/build-crd-server.sh,
# from Debian sid's Go packages) serves `apiextensions.k8s.io` and every custom resource, and so
# enforces the CRDs' CEL rules, and ResourceQuota object counts, as a current cluster does. No container engine or binary download is needed.
# The binaries are cached in $HOOKLINE_CACHE_DIR (default ~/.cache/hookline): only the first run
# pays for the builds. HOOKLINE_CRD_SERVER_EMULATED_VERSION (e.g. 1.33) makes the CRD server
# judge CRDs as that older release does.
set -euo pipefail

K8S_VERSION=1.20.2
CONTROL_PLANE_BINS=(kube-apiserver kube-controller-manager)
# The first address of --service-cluster-ip-range: the `kubernetes` Service.
KUBERNETES_SERVICE_IP=10.0.0.1
NODE_BINS=(kubelet kube-scheduler kube-proxy)
# The Service (kube-system) through which the 1.20 aggregator reaches the CRD server.
CRD_SERVICE=hookline-crd-server
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${HOOKLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline}
BIN_DIR="$CACHE_DIR/k8s-$K8S_VERSION"
STATE_DIR=${HOOKLINE_CLUSTER_DIR:-$ROOT/.cluster}

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

# --- dependencies -------------------------------------------------------------------------

install_packages() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  if [ "${1:-}" = build ]; then
    command -v go >/dev/null || missing+=(golang-go)
    command -v rsync >/dev/null || missing+=(rsync)
    [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || missing+=(golang-github-modern-go-reflect2-dev)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing apt packages: ${missing[*]}"
  apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

enable_deb_src() {
  local src=/etc/apt/sources.list.d/debian.sources dst=/etc/apt/sources.list.d/hookline-deb-src.sources
  [ -f "$dst" ] && return 0
  [ -f "$src" ] || die "$src not found: cannot derive a deb-src entry for the kubernetes source package"
  log "adding deb-src entries (derived from $src)"
  sed 's/^Types: deb$/Types: deb-src/' "$src" | as_root tee "$dst" >/dev/null
  as_root apt-get update -qq >/dev/null
}

# build_k8s BINARY...: build the named Kubernetes commands (cmd/<name>) that are not cached yet, in
# one `make`, so the packages they share compile once.
build_k8s() {
  local want=() b
  for b in "$@"; do [ -x "$BIN_DIR/$b" ] || want+=("$b"); done
  [ ${#want[@]} -eq 0 ] && return 0
  install_packages build
  enable_deb_src
  local work="$CACHE_DIR/build"
  local buildlog="$CACHE_DIR/k8s-build.log"
  rm -rf "$work"; mkdir -p "$work"
  log "building ${want[*]} (Kubernetes $K8S_VERSION) from Debian's source: first run only, ≈$((3 + ${#want[@]} / 2)) min on 2 cores; log: $buildlog"
  (
    set -e
    cd "$work"
    apt-get source --download-only kubernetes
    tar -xzf kubernetes_*.orig.tar.gz
    cd "kubernetes-$K8S_VERSION"
    # The vendored reflect2 1.0.1 crashes on Go >= 1.18; Debian's copy is fixed.
    rm -rf vendor/github.com/modern-go/reflect2
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
    mkdir -p "$work/.go/src/k8s.io"
    ln -sfn "$work/kubernetes-$K8S_VERSION" "$work/.go/src/k8s.io/kubernetes"
    cd "$work/.go/src/k8s.io/kubernetes"
    GOPATH="$work/.go" GOCACHE="$work/.gocache" CGO_ENABLED=0 \
      make WHAT="${want[*]/#/cmd/}" GOFLAGS=-tags=providerless
  ) >"$buildlog" 2>&1 || die "building Kubernetes failed; see $buildlog (last lines: $(tail -n 5 "$buildlog" | tr '\n' ' '))"
  mkdir -p "$BIN_DIR"
  local out="$work/kubernetes-$K8S_VERSION/_output/local/bin/linux/amd64"
  for b in "${want[@]}"; do cp "$out/$b" "$BIN_DIR/"; done
  # The pause container's source, for the node's sandbox image (hack/node.sh).
  if [ -f "$work/kubernetes-$K8S_VERSION/build/pause/linux/pause.c" ]; then
    cp "$work/kubernetes-$K8S_VERSION/build/pause/linux/pause.c" "$BIN_DIR/pause.c"
  fi
  rm -rf "$work"
  log "cached ${want[*]} in $BIN_DIR"
}

build_crd_server() {
  "$ROOT/hack/build-crd-server.sh" | tail -n 1
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "the CEL-enforcing CRD server could not be built (see above)"
}

# --- processes ------------------------------------------------------------------------------

node_ip() { sed -n 's/^NODE_IP=//p' "$ROOT/hack/node.sh"; }
start_bg() { start_in "$STATE_DIR" "$@"; }
stop_pid() { stop_pidfile "$STATE_DIR/$1.pid"; }

wait_for() { # description, seconds, pidfile, logfile, command...
  local what=$1 secs=$2 pidfile=$3 logfile=$4; shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$pidfile" || die "$what exited during start-up; its log $logfile ends with: $(tail -n 5 "$logfile" | tr '\n' ' ')"
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${secs}s; see $logfile"
    sleep 0.2
  done
}

write_kubeconfig() { # server, token, file
  cat >"$3" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: hookline-local
  cluster:
    server: $1
    certificate-authority: $STATE_DIR/certs/ca.crt
contexts:
- name: hookline-local
  context: {cluster: hookline-local, user: admin, namespace: default}
current-context: hookline-local
users:
- name: admin
  user: {token: $2}
KUBECONFIG
}

up() { # [--node]
  local node=false
  [ "${1:-}" = --node ] && node=true
  if pid_alive "$STATE_DIR/kube-apiserver.pid"; then
    if $node && [ ! -f "$STATE_DIR/node-ip" ]; then
      die "running without a node: hack/cluster.sh down, then up --node"
    fi
    log "already running"
    echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
    return 0
  fi
  [ -d "$STATE_DIR" ] && down_quiet
  install_packages
  if $node; then build_k8s "${CONTROL_PLANE_BINS[@]}" "${NODE_BINS[@]}"; else build_k8s "${CONTROL_PLANE_BINS[@]}"; fi
  CRD_SERVER=$(build_crd_server)
  mkdir -p "$STATE_DIR/certs"
  chmod 700 "$STATE_DIR"
  # With a node the API server listens on the node's bridge, which must exist first.
  local api_host=127.0.0.1
  if $node; then
    "$ROOT/hack/node.sh" bridge
    api_host=$(node_ip)
    echo "$api_host" >"$STATE_DIR/node-ip"
  fi
  echo "$api_host" >"$STATE_DIR/api-host"

  # etcd state lives on tmpfs when there is one: a throwaway test cluster needs no disk fsync.
  local etcd_data
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then etcd_data=$(mktemp -d /dev/shm/hookline-etcd.XXXXXX)
  else etcd_data="$STATE_DIR/etcd"; mkdir -p "$etcd_data"; fi
  echo "$etcd_data" >"$STATE_DIR/etcd-data-dir"

  local etcd_port etcd_peer api_port crd_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); crd_port=$(free_port)
  while [ "$etcd_peer" = "$etcd_port" ]; do etcd_peer=$(free_port); done
  while [ "$api_port" = "$etcd_port" ] || [ "$api_port" = "$etcd_peer" ]; do api_port=$(free_port); done
  while [ "$crd_port" = "$etcd_port" ] || [ "$crd_port" = "$etcd_peer" ] || [ "$crd_port" = "$api_port" ]; do
    crd_port=$(free_port)
  done

  # Keys: a throwaway CA, a serving certificate it signs (rustls refuses a CA certificate used as
  # the server's own) for loopback, the node's bridge address and the `kubernetes` Service (its
  # IP and names, for pods' in-cluster config), and a service-account signing key.
  local c="$STATE_DIR/certs"
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' >"$c/client.cnf"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=hookline-local-ca \
      -keyout "$c/ca.key" -out "$c/ca.crt" &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$api_host" -keyout "$c/apiserver.key" -out "$c/apiserver.csr" &&
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
      "$api_host" "$KUBERNETES_SERVICE_IP" >"$c/ext.cnf" &&
    openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial -days 30 \
      -extfile "$c/ext.cnf" -out "$c/apiserver.crt" &&
    # The API server's client certificate towards kubelets (logs, exec).
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      -keyout "$c/kubelet-client.key" -out "$c/kubelet-client.csr" &&
    openssl x509 -req -in "$c/kubelet-client.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial -days 30 \
      -extfile "$c/client.cnf" -out "$c/kubelet-client.crt"
  } >/dev/null 2>&1 || die "openssl could not create the serving certificate"
  # The front proxies requests for aggregated APIs with a client certificate from a CA of its
  # own; the CRD server serves a certificate for the Service name the aggregator verifies.
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=hookline-front-proxy-ca \
      -keyout "$c/front-proxy-ca.key" -out "$c/front-proxy-ca.crt" &&
    openssl req -newkey rsa:2048 -nodes -subj /CN=front-proxy-client \
      -keyout "$c/front-proxy-client.key" -out "$c/front-proxy-client.csr" &&
    openssl x509 -req -in "$c/front-proxy-client.csr" -CA "$c/front-proxy-ca.crt" -CAkey "$c/front-proxy-ca.key" \
      -CAcreateserial -days 30 -extfile "$c/client.cnf" -out "$c/front-proxy-client.crt" &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$CRD_SERVICE.kube-system.svc" \
      -keyout "$c/crd-server.key" -out "$c/crd-server.csr" &&
    printf 'subjectAltName=DNS:%s.kube-system.svc,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
      "$CRD_SERVICE" >"$c/crd-server.cnf" &&
    openssl x509 -req -in "$c/crd-server.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial -days 30 \
      -extfile "$c/crd-server.cnf" -out "$c/crd-server.crt"
  } >/dev/null 2>&1 || die "openssl could not create the front-proxy and CRD server certificates"
  openssl genrsa -out "$STATE_DIR/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$STATE_DIR/certs/sa.key" -pubout -out "$STATE_DIR/certs/sa.pub" 2>/dev/null
  local token
  token=$(openssl rand -hex 24)
  echo "$token,admin,admin,\"system:masters\"" >"$STATE_DIR/tokens.csv"

  log "starting etcd on 127.0.0.1:$etcd_port"
  start_bg etcd etcd --name hookline --data-dir "$etcd_data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "hookline=http://127.0.0.1:$etcd_peer"
  wait_for etcd 30 "$STATE_DIR/etcd.pid" "$STATE_DIR/etcd.log" curl -fsS "http://127.0.0.1:$etcd_port/health"

  echo "$etcd_port" >"$STATE_DIR/etcd-port"
  echo "$api_port" >"$STATE_DIR/api-port"
  echo "$crd_port" >"$STATE_DIR/crd-port"
  start_apiserver

  write_kubeconfig "https://$api_host:$api_port" "$token" "$STATE_DIR/kubeconfig"
  chmod 600 "$STATE_DIR/kubeconfig"

  start_crd_server "$etcd_port" "$crd_port"
  wire_crd_server "$crd_port"

  # resourcequota keeps ResourceQuotas' usage, which the CRD server's quota admission checks;
  # resynced every 5 s (not 5 min), since tests install CRDs after it starts and a quota counts a
  # newly discovered resource only from its next sync.
  # With a node, also the controllers that make pods run: workloads, Services' endpoints,
  # ServiceAccounts and their tokens, node health, volumes, disruption budgets.
  local controllers=garbagecollector,namespace,resourcequota node_flags=()
  if $node; then
    controllers+=,serviceaccount,serviceaccount-token,nodelifecycle,clusterrole-aggregation,deployment,replicaset
    controllers+=,endpoint,endpointslice,disruption,persistentvolume-binder,pvc-protection,pv-protection,podgc,job
    node_flags=(--service-account-private-key-file "$c/sa.key" --root-ca-file "$c/ca.crt")
  fi
  log "starting kube-controller-manager ($controllers)"
  start_bg kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig "$STATE_DIR/kubeconfig" --controllers "$controllers" "${node_flags[@]}" \
    --resource-quota-sync-period 5s \
    --leader-elect=false --bind-address 127.0.0.1 --port 0 --secure-port 0
  # Give it a moment to fail on bad flags before declaring success.
  wait_for kube-controller-manager 30 "$STATE_DIR/kube-controller-manager.pid" \
    "$STATE_DIR/kube-controller-manager.log" grep -q "Started garbage collector\|Starting namespace controller\|Started \"namespace\"" \
    "$STATE_DIR/kube-controller-manager.log"

  log "control plane ready: Kubernetes $K8S_VERSION, CRDs served by $(basename "$(dirname "$CRD_SERVER")") (state: $STATE_DIR)"
  if $node; then
    "$ROOT/hack/node.sh" up
  fi
  echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
}

# Start kube-apiserver on the ports `up` chose (also used to restart it after `apiserver-stop`).
start_apiserver() {
  local etcd_port api_port token api_host c="$STATE_DIR/certs"
  etcd_port=$(cat "$STATE_DIR/etcd-port"); api_port=$(cat "$STATE_DIR/api-port"); api_host=$(cat "$STATE_DIR/api-host")
  token=$(cut -d, -f1 "$STATE_DIR/tokens.csv")
  log "starting kube-apiserver on https://$api_host:$api_port"
  start_bg kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$api_host" --advertise-address "$api_host" --secure-port "$api_port" --insecure-port 0 \
    --kubelet-client-certificate "$c/kubelet-client.crt" --kubelet-client-key "$c/kubelet-client.key" \
    --tls-cert-file "$STATE_DIR/certs/apiserver.crt" --tls-private-key-file "$STATE_DIR/certs/apiserver.key" \
    --cert-dir "$STATE_DIR/certs" --token-auth-file "$STATE_DIR/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$STATE_DIR/certs/sa.pub" \
    --service-account-signing-key-file "$STATE_DIR/certs/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --requestheader-client-ca-file "$STATE_DIR/certs/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$STATE_DIR/certs/front-proxy-client.crt" \
    --proxy-client-key-file "$STATE_DIR/certs/front-proxy-client.key" \
    --runtime-config apiextensions.k8s.io/v1beta1=false
  wait_for kube-apiserver 90 "$STATE_DIR/kube-apiserver.pid" "$STATE_DIR/kube-apiserver.log" \
    curl -fsS --cacert "$STATE_DIR/certs/ca.crt" -H "Authorization: Bearer $token" \
    "https://$api_host:$api_port/readyz"
}

# The CRD server: k8s.io/apiextensions-apiserver 1.36 on the same etcd under a prefix of its own
# (with the shared prefix, 1.20 would serve the CRDs itself, without CEL), authenticating and
# authorizing every request against the 1.20 front (delegated, as an aggregated API server does).
start_crd_server() { # etcd_port crd_port
  local kc="$STATE_DIR/kubeconfig" c="$STATE_DIR/certs" token emulated=()
  token=$(cut -d, -f1 "$STATE_DIR/tokens.csv")
  if [ -n "${HOOKLINE_CRD_SERVER_EMULATED_VERSION:-}" ]; then
    emulated=(--emulated-version "$HOOKLINE_CRD_SERVER_EMULATED_VERSION"
      --min-compatibility-version "$HOOKLINE_CRD_SERVER_EMULATED_VERSION")
    log "the CRD server emulates Kubernetes $HOOKLINE_CRD_SERVER_EMULATED_VERSION"
  fi
  log "starting the CRD server on https://127.0.0.1:$2"
  start_bg crd-server "$CRD_SERVER" \
    --etcd-servers "http://127.0.0.1:$1" --etcd-prefix /registry-cel \
    --bind-address 127.0.0.1 --secure-port "$2" \
    --tls-cert-file "$c/crd-server.crt" --tls-private-key-file "$c/crd-server.key" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --enable-priority-and-fairness=false \
    --disable-admission-plugins MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,MutatingAdmissionPolicy \
    "${emulated[@]}"
  wait_for "CRD server" 60 "$STATE_DIR/crd-server.pid" "$STATE_DIR/crd-server.log" \
    curl -fsS --cacert "$c/ca.crt" -H "Authorization: Bearer $token" "https://127.0.0.1:$2/readyz"
}

# An APIService sending group/version to the CRD server.
apiservice() { # group version
  local ca
  ca=$(base64 -w0 "$STATE_DIR/certs/ca.crt")
  cat <<YAML
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: $2.$1
  labels: {app.kubernetes.io/managed-by: hookline-cluster}
spec:
  group: $1
  version: $2
  service: {namespace: kube-system, name: $CRD_SERVICE, port: $(cat "$STATE_DIR/crd-port")}
  caBundle: $ca
  groupPriorityMinimum: 1000
  versionPriority: 15
YAML
}

kc() { kubectl --kubeconfig "$STATE_DIR/kubeconfig" "$@"; }

# Whether APIService NAME sends its group/version to the CRD server and is available. The front's
# own CRD registration sees the CRDs too (it reads them through the CRD server) and may register a
# Local APIService for a new group first: the front would then serve that group itself, without
# CEL rules, and such an APIService is Available as well.
routed() { # APIService name
  [ "$(kc get apiservice "$1" -o jsonpath='{.spec.service.name}/{.status.conditions[?(@.type=="Available")].status}' </dev/null 2>/dev/null)" = "$CRD_SERVICE/True" ]
}

available() { # APIService name
  [ "$(kc get apiservice "$1" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' </dev/null 2>/dev/null)" = True ]
}

# Point the front's `apiextensions.k8s.io/v1` at the CRD server (the built-in APIService loses
# its automanaged label, so the front's own registration leaves it alone from then on), then
# route custom resources as their CRDs appear.
wire_crd_server() { # crd_port
  kc apply -f - >/dev/null <<YAML || die "cannot create the Service kube-system/$CRD_SERVICE"
apiVersion: v1
kind: Service
metadata: {name: $CRD_SERVICE, namespace: kube-system}
spec:
  type: ExternalName
  externalName: 127.0.0.1
  ports: [{name: https, port: $1}]
YAML
  # One replace: the automanaged label goes in the same write that points it elsewhere.
  apiservice apiextensions.k8s.io v1 | kc replace -f - >/dev/null \
    || die "cannot point the APIService v1.apiextensions.k8s.io at the CRD server"
  local deadline=$((SECONDS + 30))
  until available v1.apiextensions.k8s.io && kc get crd >/dev/null 2>&1; do
    pid_alive "$STATE_DIR/crd-server.pid" || die "the CRD server exited; its log ends with: $(tail -n 5 "$STATE_DIR/crd-server.log" | tr '\n' ' ')"
    [ $SECONDS -lt $deadline ] || die "apiextensions.k8s.io is not served through the CRD server after 30s: $(kc get apiservice v1.apiextensions.k8s.io -o jsonpath='{.status.conditions}')"
    sleep 0.2
  done
  log "routing custom resources to the CRD server as their CRDs appear"
  setsid "$ROOT/hack/cluster.sh" route-crds >"$STATE_DIR/crd-router.log" 2>&1 < /dev/null &
  echo $! >"$STATE_DIR/crd-router.pid"
}

# kube-apiserver registers an APIService for each CRD's group/version itself; with the CRDs in the
# server behind it, this loop does that job. A version is routed once the CRD server lists it:
# routed earlier, the aggregator would call it unavailable until its next check, 30 s later.
route_crds() {
  local token crd_port
  token=$(cut -d, -f1 "$STATE_DIR/tokens.csv"); crd_port=$(cat "$STATE_DIR/crd-port")
  while true; do
    # go-template: kubectl's jsonpath printer fails on the second object of a watch.
    kc get crd --watch -o go-template='{{.spec.group}}{{range .spec.versions}} {{.name}}{{end}}{{"\n"}}' 2>/dev/null |
      while read -r group versions; do
        for version in $versions; do
          routed "$version.$group" && continue
          for _ in $(seq 1 150); do
            curl -fs --cacert "$STATE_DIR/certs/ca.crt" -H "Authorization: Bearer $token" \
              "https://127.0.0.1:$crd_port/apis/$group/$version" </dev/null >/dev/null && break
            sleep 0.1
          done
          # Created anew, so that the aggregator checks it at once; replaced (automanaged label and
          # all) if the front registered its own in between.
          kc delete apiservice "$version.$group" --ignore-not-found </dev/null >/dev/null 2>&1
          { apiservice "$group" "$version" | kc create -f - >/dev/null 2>&1 ||
            apiservice "$group" "$version" | kc replace -f - >/dev/null; } && echo "routed $group/$version"
        done
      done
    sleep 1  # the front restarted or the watch ended: watch again
  done
}

# A process group started with setsid: the router and the kubectl it runs.
stop_group() { # name
  local pidfile="$STATE_DIR/$1.pid"
  pid_alive "$pidfile" && kill -- "-$(cat "$pidfile")" 2>/dev/null
  rm -f "$pidfile"
}

down_quiet() {
  if [ -d "$STATE_DIR/node" ] || [ -f "$STATE_DIR/node-ip" ]; then "$ROOT/hack/node.sh" down; fi
  stop_group crd-router
  stop_pid kube-controller-manager
  stop_pid crd-server
  stop_pid kube-apiserver
  stop_pid etcd
  if [ -f "$STATE_DIR/etcd-data-dir" ]; then rm -rf "$(cat "$STATE_DIR/etcd-data-dir")"; fi
  rm -rf "$STATE_DIR"
}

down() {
  if [ ! -d "$STATE_DIR" ]; then log "not running"; return 0; fi
  down_quiet
  log "stopped and removed $STATE_DIR"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  build) install_packages; build_k8s "${CONTROL_PLANE_BINS[@]}" "${NODE_BINS[@]}"; build_crd_server >/dev/null ;;
  route-crds) route_crds ;;  # internal: the router that `up` starts
  # Stop and start only the API server (etcd and its data stay): for tests of API-server outages.
  apiserver-stop) stop_pid kube-apiserver ;;
  apiserver-start)
    pid_alive "$STATE_DIR/kube-apiserver.pid" || start_apiserver ;;
  status)
    if pid_alive "$STATE_DIR/kube-apiserver.pid"; then echo "running: export KUBECONFIG=$STATE_DIR/kubeconfig"
    else echo "not running"; exit 1; fi ;;
  env)
    pid_alive "$STATE_DIR/kube-apiserver.pid" || die "not running (hack/cluster.sh up)"
    echo "export KUBECONFIG=$STATE_DIR/kubeconfig" ;;
  *) echo "usage: $0 up [--node]|down|status|env|build|apiserver-stop|apiserver-start" >&2; exit 2 ;;
esac
