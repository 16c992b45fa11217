#!/usr/bin/env bash
# The local cluster's one node: containerd + runc + kubelet + kube-proxy + kube-scheduler, so the
# chart's pods really run. Called by `hack/cluster.sh up --node` and `down`, never on its own.
#
#   hack/node.sh bridge    create the node's bridge (the API server binds its address)
#   hack/node.sh up        start the node against the running control plane; return once Ready
#   hack/node.sh down      stop everything `bridge` and `up` started, restore what they changed
#   hack/node.sh snapshot  print what a node changes on this machine (processes, links, iptables
#                          rules, sysctls, fixed paths, cgroups, mounts): hack/test.sh compares
#                          it before `up` and after `down`
#
# Network (see shared/TESTING.md): pods sit on a bridge of this script's (cni0, $NODE_CIDR) in
# network namespaces containerd makes; they have no default route, only the pod range and the
# Service range (through the node). The node forwards only from the bridge back to the bridge
# (forwarding is on for cni0 alone; net.ipv4.ip_forward stays 0), and an iptables chain drops
# anything from the bridge to elsewhere and anything to the Service range that kube-proxy did not
# rewrite. Pods get an empty resolv.conf: there is no cluster DNS, and nothing may need one.
# Nothing is ever pulled: images are named localhost/… and imported (hack/image.sh); containerd's
# registry traffic goes to a dead proxy on loopback.
#
# State: $HOOKLINE_CLUSTER_DIR/node; the fixed paths of kubelet, containerd and CNI (FIXED_PATHS)
# and kubelet's cgroups are removed on `down`; the sysctls kubelet and kube-proxy change and the
# iptables rules are restored.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${HOOKLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline}
BIN_DIR="$CACHE_DIR/k8s-1.20.2"
STATE_DIR=${HOOKLINE_CLUSTER_DIR:-$ROOT/.cluster}
NODE_DIR="$STATE_DIR/node"
BRIDGE=cni0
NODE_IP=10.244.0.1
NODE_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
CHAIN=HOOKLINE-NODE
PAUSE_IMAGE=localhost/hookline/pause:3.4
# The sysctls kubelet (and kube-proxy: route_localnet) set at start; restored on `down`.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables)
# Fixed paths kubelet, containerd and the CNI plugins use whatever their flags say (pod logs,
# device plugins, shim sockets, CNI results and locks): removed on `down` unless they existed before.
FIXED_PATHS=(/var/log/pods /var/log/containers /var/lib/kubelet /run/containerd /var/lib/cni /etc/cni)
# How many pre-made volumes the default StorageClass offers (each is bound once: Retain).
VOLUMES=24

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

kc() { kubectl --kubeconfig "$STATE_DIR/kubeconfig" "$@"; }
start_bg() { start_in "$NODE_DIR" "$@"; }
stop_pid() { stop_pidfile "$NODE_DIR/$1.pid"; }
ctr_() { ctr --address "$NODE_DIR/containerd/containerd.sock" --namespace k8s.io "$@"; }

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  command -v ip >/dev/null || missing+=(iproute2)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing apt packages: ${missing[*]}"
  apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

# --- the bridge --------------------------------------------------------------------------------

bridge() {
  [ "$(id -u)" -eq 0 ] || die "a node needs root (network namespaces, mounts, cgroups)"
  install_packages
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    [ -f "$NODE_DIR/bridge" ] || die "$BRIDGE exists and is not this cluster's: another node runs on this machine (hack/cluster.sh down there first)"
    return 0
  fi
  mkdir -p "$NODE_DIR"
  save_host_state
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  touch "$NODE_DIR/bridge"
  # Forwarding in from the bridge only (pod → Service → pod comes back out of the bridge).
  sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1"
  guard_rules
}

# The machine as it was before the node, to put back on `down`.
save_host_state() {
  local s p
  : >"$NODE_DIR/sysctls.saved"
  for s in "${SYSCTLS[@]}"; do
    [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(sysctl -n "$s")" >>"$NODE_DIR/sysctls.saved"
  done
  for p in "${FIXED_PATHS[@]}"; do [ ! -e "$p" ] || echo "$p"; done >"$NODE_DIR/paths.before"
  iptables-save >"$NODE_DIR/iptables.saved"
  ip6tables-save >"$NODE_DIR/ip6tables.saved" 2>/dev/null || true
}

guard_rules() {
  iptables -N "$CHAIN"
  iptables -A "$CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -A "$CHAIN" -d "$SERVICE_CIDR" -j DROP
  iptables -I FORWARD 1 -j "$CHAIN"
  # From the machine itself: Service-range traffic kube-proxy did not rewrite goes nowhere.
  iptables -I OUTPUT 1 -d "$SERVICE_CIDR" -j DROP
}

# --- images ------------------------------------------------------------------------------------

# The sandbox ("pause") image, from the pause.c of Debian's Kubernetes source (cached by
# hack/cluster.sh's build), compiled static and wrapped as an image with buildah.
pause_image() {
  local tar="$CACHE_DIR/images/pause-3.4.tar"
  if [ ! -f "$tar" ]; then
    [ -f "$BIN_DIR/pause.c" ] || die "$BIN_DIR/pause.c is missing (hack/cluster.sh build caches it)"
    log "building the pause image from Debian's Kubernetes source (first run only)"
    mkdir -p "$CACHE_DIR/images"
    local work; work=$(mktemp -d)
    gcc -static -Os -DVERSION=3.4-hookline -o "$work/pause" "$BIN_DIR/pause.c" || die "compiling pause.c failed"
    strip "$work/pause"
    "$ROOT/hack/image.sh" from-files "$PAUSE_IMAGE" "$tar" /pause "$work/pause:/pause"
    rm -rf "$work"
  fi
  ctr_ images import "$tar" >/dev/null || die "importing the pause image failed"
}

# --- processes ---------------------------------------------------------------------------------

write_configs() {
  local c="$NODE_DIR"
  mkdir -p "$c/containerd" "$c/cni" "$c/kubelet" "$c/volumes"
  cat >"$c/containerd/config.toml" <<TOML
version = 2
root = "$c/containerd/root"
state = "$c/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$c/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Required: root here lacks CAP_SYS_RESOURCE, and the pause container fails without it.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$c/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/containerd/certs.d"
TOML
  # No default route: a pod reaches the pod range and, through the node, the Service range.
  cat >"$c/cni/10-hookline.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "hookline", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$c/cni-ipam",
            "ranges": [[{"subnet": "$NODE_CIDR", "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.250"}]],
            "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]}},
  {"type": "loopback"}
]}
JSON
  # No cluster DNS: a pod that looks a name up asks its own loopback and is refused at once
  # (with no nameserver at all, containerd would copy the machine's resolv.conf).
  echo "nameserver 127.0.0.1" >"$c/resolv.conf"
}

start_containerd() {
  log "starting containerd"
  # Nothing is ever pulled (images are localhost/… and imported): should a pod name an image that
  # is not here, the pull goes to a proxy on loopback where nothing listens, never to a registry.
  start_bg containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "$NODE_DIR/containerd/config.toml"
  local deadline=$((SECONDS + 30))
  until ctr_ version >/dev/null 2>&1; do
    pid_alive "$NODE_DIR/containerd.pid" || die "containerd exited: $(tail -n 5 "$NODE_DIR/containerd.log" | tr '\n' ' ')"
    [ $SECONDS -lt $deadline ] || die "containerd not ready after 30s; see $NODE_DIR/containerd.log"
    sleep 0.1
  done
}

start_kubelet() {
  local c="$NODE_DIR"
  log "starting kubelet (node $NODE_IP)"
  start_bg kubelet "$BIN_DIR/kubelet" \
    --kubeconfig "$STATE_DIR/kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$c/containerd/containerd.sock" \
    --cgroup-driver cgroupfs --fail-swap-on=false \
    --hostname-override "$NODE_IP" --node-ip "$NODE_IP" --address "$NODE_IP" --healthz-port 0 --read-only-port 0 \
    --root-dir "$c/kubelet" --cert-dir "$c/kubelet/pki" --volume-plugin-dir "$c/kubelet/volume-plugins" \
    --client-ca-file "$STATE_DIR/certs/ca.crt" --anonymous-auth=false --authorization-mode Webhook \
    --pod-infra-container-image "$PAUSE_IMAGE" --resolv-conf "$c/resolv.conf" \
    --image-gc-high-threshold 100 --image-gc-low-threshold 99 \
    --eviction-hard 'memory.available<100Mi,nodefs.available<2%,imagefs.available<2%' \
    --node-labels hookline.dev/test-node=true
}

start_kube_proxy() {
  log "starting kube-proxy (iptables)"
  start_bg kube-proxy "$BIN_DIR/kube-proxy" \
    --kubeconfig "$STATE_DIR/kubeconfig" --hostname-override "$NODE_IP" \
    --proxy-mode iptables --cluster-cidr "$NODE_CIDR" --nodeport-addresses 127.0.0.0/8 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --oom-score-adj 0 --bind-address 127.0.0.1 \
    --healthz-bind-address "127.0.0.1:$(free_port)" --metrics-bind-address "127.0.0.1:$(free_port)"
}

start_scheduler() {
  log "starting kube-scheduler"
  start_bg kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig "$STATE_DIR/kubeconfig" --leader-elect=false --port 0 --secure-port 0
}

# A default StorageClass with a pool of local volumes on the node, so a default `helm install`
# gets its PVC as on kind. Local volumes (not hostPath) so that kubelet applies fsGroup, as it
# does for the disks of a real cluster.
storage() {
  local i
  {
    cat <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
YAML
    for i in $(seq 1 "$VOLUMES"); do
      mkdir -p "$NODE_DIR/volumes/pv-$i"
      cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv-$i}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  local: {path: $NODE_DIR/volumes/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: ["$NODE_IP"]}]}]
YAML
    done
  } | kc apply -f - >/dev/null || die "cannot create the StorageClass and its volumes"
}

wait_node_ready() {
  local deadline=$((SECONDS + 120))
  until [ "$(kc get node "$NODE_IP" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
    for p in containerd kubelet kube-proxy kube-scheduler; do
      pid_alive "$NODE_DIR/$p.pid" || die "$p exited; its log $NODE_DIR/$p.log ends with: $(tail -n 5 "$NODE_DIR/$p.log" | tr '\n' ' ')"
    done
    [ $SECONDS -lt $deadline ] || die "node $NODE_IP not Ready after 120s; see $NODE_DIR/kubelet.log"
    sleep 0.5
  done
}

up() {
  [ -f "$NODE_DIR/bridge" ] || die "no bridge: hack/cluster.sh up --node creates it before the API server"
  if pid_alive "$NODE_DIR/kubelet.pid"; then log "already running"; return 0; fi
  install_packages
  write_configs
  start_containerd
  pause_image
  start_kubelet
  start_kube_proxy
  start_scheduler
  wait_node_ready
  # kube-proxy puts its own jumps first: the guard goes back in front of them.
  iptables -D FORWARD -j "$CHAIN" && iptables -I FORWARD 1 -j "$CHAIN"
  storage
  log "node $NODE_IP Ready (pods on $NODE_CIDR, Services on $SERVICE_CIDR; state: $NODE_DIR)"
}

# --- down --------------------------------------------------------------------------------------

# Every process whose command line or executable lies in the node's directory (containerd's
# shims, the containers' processes): their root is a mount below it.
kill_leftovers() {
  local pid exe root
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$pid" = $$ ] && continue
    root=$(readlink "/proc/$pid/root" 2>/dev/null) || continue
    exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    case "$root $exe" in *"$NODE_DIR"*) kill -9 "$pid" 2>/dev/null || true ;; esac
  done
}

unmount_all() {
  local m
  # Deepest first; lazily, so a mount still busy for a moment goes once released.
  for m in $(awk -v d="$NODE_DIR" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice /sys/fs/cgroup/kubepods; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$d" ] && log "could not remove cgroup $d (a process is still in it)"
  done
}

restore_host_state() {
  local t
  if [ -f "$NODE_DIR/iptables.saved" ]; then
    # Empty every table the node touched, then put back what was there before.
    for t in filter nat mangle raw; do
      iptables -t "$t" -F 2>/dev/null || true
      iptables -t "$t" -X 2>/dev/null || true
    done
    iptables-restore <"$NODE_DIR/iptables.saved"
  fi
  if [ -f "$NODE_DIR/ip6tables.saved" ]; then
    for t in filter nat mangle raw; do
      ip6tables -t "$t" -F 2>/dev/null || true
      ip6tables -t "$t" -X 2>/dev/null || true
    done
    ip6tables-restore <"$NODE_DIR/ip6tables.saved" 2>/dev/null || true
  fi
  if [ -f "$NODE_DIR/sysctls.saved" ]; then
    while IFS= read -r line; do sysctl -qw "$line" || log "could not restore $line"; done <"$NODE_DIR/sysctls.saved"
  fi
}

down() {
  [ -d "$NODE_DIR" ] || return 0
  # Pods first: kubelet would restart what containerd loses.
  stop_pid kube-scheduler
  stop_pid kubelet
  stop_pid kube-proxy
  if pid_alive "$NODE_DIR/containerd.pid"; then
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  kill_leftovers
  unmount_all
  remove_cgroups
  # kube-proxy's own clean-up of its chains, then the tables as they were.
  [ -x "$BIN_DIR/kube-proxy" ] && "$BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  if [ -f "$NODE_DIR/bridge" ]; then ip link del "$BRIDGE" 2>/dev/null || true; fi
  restore_host_state
  if [ -f "$NODE_DIR/paths.before" ]; then
    local p
    for p in "${FIXED_PATHS[@]}"; do grep -qxF "$p" "$NODE_DIR/paths.before" || rm -rf "$p"; done
  fi
  rm -rf "$NODE_DIR" || { unmount_all; rm -rf "$NODE_DIR"; }
  log "node removed: processes, mounts, cgroups, $BRIDGE, iptables rules and sysctls restored"
}

snapshot() {
  local p s
  echo "processes:$(for p in containerd kubelet kube-proxy kube-scheduler containerd-shim; do
    pgrep -x "$p" >/dev/null 2>&1 && printf ' %s' "$p"; done)"
  echo "links: $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sort | tr '\n' ' ')"
  echo "iptables:"; { iptables-save 2>/dev/null || true; } | { grep '^-A' || true; } | sort
  for s in "${SYSCTLS[@]}"; do [ ! -e "/proc/sys/${s//.//}" ] || echo "$s=$(sysctl -n "$s")"; done
  for p in "${FIXED_PATHS[@]}"; do [ ! -e "$p" ] || echo "exists: $p"; done
  for p in /sys/fs/cgroup/*/kubepods; do [ ! -d "$p" ] || echo "cgroup: $p"; done
  awk '{print $2}' /proc/self/mounts | { grep -E 'kubelet|containerd|netns|/node/' || true; } | sed 's/^/mount: /'
}

case "${1:-}" in
  snapshot) snapshot ;;
  bridge) bridge ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 bridge|up|down (called by hack/cluster.sh)" >&2; exit 2 ;;
esac
