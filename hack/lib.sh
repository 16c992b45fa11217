# Shared by the hack/ scripts (sourced, not run; it only defines functions): free ports, background
# processes by pid file, root and
# apt for what a fresh machine lacks, and for demo.sh and bench.sh a session: a private control
# plane in target/<name>-cluster, a scratch directory, background processes, all removed on exit.

# free_port: a port free to listen on, below Linux's ephemeral range (32768 up), where the kernel
# picks ports for outgoing connections and binds to port 0 (one of those took a port this had
# handed out before its server started).
free_port() {
  # A port is handed out once: the ones given (to this and every other script, e.g.
  # hack/postgres.sh) are kept in a shared file under a lock, because a port chosen but not yet
  # bound looks free to the next caller (a bench run's receiver once got a replica's port).
  python3 - "${TMPDIR:-/tmp}/hookline-free-ports" <<'PY'
import fcntl, random, socket, sys
with open(sys.argv[1], "a+") as given:
    fcntl.flock(given, fcntl.LOCK_EX)
    given.seek(0)
    used = set(given.read().split())
    if len(used) > 4000:
        given.truncate(0)
        used = set()
    while True:
        port = random.randrange(20000, 32000)
        if str(port) in used:
            continue
        try:
            socket.socket().bind(("127.0.0.1", port))
        except OSError:
            continue
        given.write(f"{port}\n")
        print(port)
        break
PY
}

# pid_alive PIDFILE: whether the process that PIDFILE names is running.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_in DIR NAME COMMAND...: run COMMAND in the background, its output in DIR/NAME.log and its
# pid in DIR/NAME.pid.
start_in() {
  local dir=$1 name=$2; shift 2
  "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

# stop_pidfile PIDFILE: stop the process it names (SIGTERM; SIGKILL after 20 s) and remove the file.
stop_pidfile() {
  pid_alive "$1" || { rm -f "$1"; return 0; }
  local pid deadline=$((SECONDS + 20))
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then kill -9 "$pid" 2>/dev/null || true; fi
    sleep 0.1
  done
  rm -f "$1"
}

# as_root COMMAND...: run it as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

# apt_install PACKAGE...: install Debian packages quietly; fails when apt-get does.
apt_install() {
  as_root apt-get update -qq >/dev/null &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# session NAME [--node]: sets WORK and PIDS, starts the control plane (with a node: --node),
# exports KUBECONFIG, cleans up on exit.
session() {
  WORK=$(mktemp -d)
  export HOOKLINE_CLUSTER_DIR="$ROOT/target/$1-cluster"
  PIDS=()
  trap session_cleanup EXIT
  # Its progress shows (the first run builds Kubernetes); only the last line is kept.
  eval "$(hack/cluster.sh up ${2:-} | tail -n 1)"
  # --validate=false: kubectl would check the CRDs against the 1.20 front's schema of a CRD,
  # which predates CEL rules; the CRD server behind it judges them.
  kubectl apply --server-side --validate=false -f crds/ >/dev/null
  kubectl wait --for=condition=Established crd/webhooksubscriptions.hookline.dev crd/failedevents.hookline.dev \
    crd/eventtypes.hookline.dev >/dev/null
  # The front routes the new group to the CRD server moments after the CRDs appear.
  local deadline=$((SECONDS + 30))
  until kubectl get --raw /apis/hookline.dev/v1alpha1 2>/dev/null | grep -q eventtypes; do
    [ $SECONDS -lt $deadline ] || { echo "hookline.dev/v1alpha1 is not served after 30s" >&2; return 1; }
    sleep 0.2
  done
}

session_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  hack/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

# wait_ready METRICS_PORT PID LOG: wait until Hookline's /readyz answers, or fail with its log.
wait_ready() {
  for _ in $(seq 1 150); do
    curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.2
  done
  echo "Hookline did not become ready; its log ends with:" >&2
  tail -n 20 "$3" >&2
  return 1
}
