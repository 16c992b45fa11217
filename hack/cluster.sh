#!/usr/bin/env bash
# Local Kubernetes control plane for Hookline development and tests.
#
#   hack/cluster.sh up      build (first use only) and start etcd + kube-apiserver +
#                           kube-controller-manager on free loopback ports; the last line
#                           printed is `export KUBECONFIG=…`
#   hack/cluster.sh down    stop exactly what `up` started and remove its state
#   hack/cluster.sh status  say whether the control plane is running
#   hack/cluster.sh env     print the `export KUBECONFIG=…` line of a running control plane
#   hack/cluster.sh apiserver-stop | apiserver-start
#                           stop / start only kube-apiserver (same port; etcd keeps the data)
#
# Kubernetes 1.20.2 is built from Debian's `kubernetes` source package (see shared/TESTING.md):
# no container engine or binary download is needed. The binaries are cached in
# $HOOKLINE_CACHE_DIR (default ~/.cache/hookline) so only the first run pays for the build.
set -euo pipefail

K8S_VERSION=1.20.2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${HOOKLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline}
BIN_DIR="$CACHE_DIR/k8s-$K8S_VERSION"
STATE_DIR=${HOOKLINE_CLUSTER_DIR:-$ROOT/.cluster}

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"; fi
}

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
  as_root apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

enable_deb_src() {
  local src=/etc/apt/sources.list.d/debian.sources dst=/etc/apt/sources.list.d/hookline-deb-src.sources
  [ -f "$dst" ] && return 0
  [ -f "$src" ] || die "$src not found: cannot derive a deb-src entry for the kubernetes source package"
  log "adding deb-src entries (derived from $src)"
  sed 's/^Types: deb$/Types: deb-src/' "$src" | as_root tee "$dst" >/dev/null
  as_root apt-get update -qq >/dev/null
}

build_k8s() {
  if [ -x "$BIN_DIR/kube-apiserver" ] && [ -x "$BIN_DIR/kube-controller-manager" ]; then return 0; fi
  install_packages build
  enable_deb_src
  local work="$CACHE_DIR/build"
  local buildlog="$CACHE_DIR/k8s-build.log"
  rm -rf "$work"; mkdir -p "$work"
  log "building kube-apiserver + kube-controller-manager $K8S_VERSION from Debian sources (≈7 min on 2 cores; log: $buildlog)"
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
      make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" GOFLAGS=-tags=providerless
  ) >"$buildlog" 2>&1 || die "building Kubernetes failed; see $buildlog (last lines: $(tail -n 5 "$buildlog" | tr '\n' ' '))"
  mkdir -p "$BIN_DIR"
  local out="$work/kubernetes-$K8S_VERSION/_output/local/bin/linux/amd64"
  cp "$out/kube-apiserver" "$out/kube-controller-manager" "$BIN_DIR/"
  rm -rf "$work"
  log "cached binaries in $BIN_DIR"
}

# --- processes ------------------------------------------------------------------------------

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_bg() { # name, command...
  local name=$1; shift
  "$@" >"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
}

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

up() {
  if pid_alive "$STATE_DIR/kube-apiserver.pid"; then
    log "already running"
    echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
    return 0
  fi
  [ -d "$STATE_DIR" ] && down_quiet
  install_packages
  build_k8s
  mkdir -p "$STATE_DIR/certs"
  chmod 700 "$STATE_DIR"

  # etcd state lives on tmpfs when there is one: a throwaway test cluster needs no disk fsync.
  local etcd_data
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then etcd_data=$(mktemp -d /dev/shm/hookline-etcd.XXXXXX)
  else etcd_data="$STATE_DIR/etcd"; mkdir -p "$etcd_data"; fi
  echo "$etcd_data" >"$STATE_DIR/etcd-data-dir"

  local etcd_port etcd_peer api_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  while [ "$etcd_peer" = "$etcd_port" ]; do etcd_peer=$(free_port); done
  while [ "$api_port" = "$etcd_port" ] || [ "$api_port" = "$etcd_peer" ]; do api_port=$(free_port); done

  # Keys: a throwaway CA, a serving certificate it signs for 127.0.0.1 (rustls refuses a CA
  # certificate used as the server's own), and a service-account signing key.
  local c="$STATE_DIR/certs"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=hookline-local-ca \
      -keyout "$c/ca.key" -out "$c/ca.crt" &&
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$c/apiserver.key" -out "$c/apiserver.csr" &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$c/ext.cnf" &&
    openssl x509 -req -in "$c/apiserver.csr" -CA "$c/ca.crt" -CAkey "$c/ca.key" -CAcreateserial -days 30 \
      -extfile "$c/ext.cnf" -out "$c/apiserver.crt"
  } >/dev/null 2>&1 || die "openssl could not create the serving certificate"
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
  start_apiserver

  write_kubeconfig "https://127.0.0.1:$api_port" "$token" "$STATE_DIR/kubeconfig"
  chmod 600 "$STATE_DIR/kubeconfig"

  log "starting kube-controller-manager (garbagecollector, namespace)"
  start_bg kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig "$STATE_DIR/kubeconfig" --controllers garbagecollector,namespace \
    --leader-elect=false --bind-address 127.0.0.1 --port 0 --secure-port 0
  # Give it a moment to fail on bad flags before declaring success.
  wait_for kube-controller-manager 30 "$STATE_DIR/kube-controller-manager.pid" \
    "$STATE_DIR/kube-controller-manager.log" grep -q "Started garbage collector\|Starting namespace controller\|Started \"namespace\"" \
    "$STATE_DIR/kube-controller-manager.log"

  log "control plane ready (state: $STATE_DIR)"
  echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
}

# Start kube-apiserver on the ports `up` chose (also used to restart it after `apiserver-stop`).
start_apiserver() {
  local etcd_port api_port token
  etcd_port=$(cat "$STATE_DIR/etcd-port"); api_port=$(cat "$STATE_DIR/api-port")
  token=$(cut -d, -f1 "$STATE_DIR/tokens.csv")
  log "starting kube-apiserver on https://127.0.0.1:$api_port"
  start_bg kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" --insecure-port 0 \
    --tls-cert-file "$STATE_DIR/certs/apiserver.crt" --tls-private-key-file "$STATE_DIR/certs/apiserver.key" \
    --cert-dir "$STATE_DIR/certs" --token-auth-file "$STATE_DIR/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$STATE_DIR/certs/sa.pub" \
    --service-account-signing-key-file "$STATE_DIR/certs/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24
  wait_for kube-apiserver 90 "$STATE_DIR/kube-apiserver.pid" "$STATE_DIR/kube-apiserver.log" \
    curl -fsS --cacert "$STATE_DIR/certs/ca.crt" -H "Authorization: Bearer $token" \
    "https://127.0.0.1:$api_port/readyz"
}

stop_pid() { # name
  local pidfile="$STATE_DIR/$1.pid"
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then kill -9 "$pid" 2>/dev/null || true; fi
    sleep 0.1
  done
  rm -f "$pidfile"
}

down_quiet() {
  stop_pid kube-controller-manager
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
  up) up ;;
  down) down ;;
  build) install_packages; build_k8s ;;
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
  *) echo "usage: $0 up|down|status|env|build|apiserver-stop|apiserver-start" >&2; exit 2 ;;
esac
