#!/usr/bin/env bash
# A throwaway PostgreSQL for Hookline development, tests and benchmarks.
#
#   hack/postgres.sh up      start PostgreSQL 15 (Debian's package; installed where missing) in a
#                            private directory on a free loopback port, fsync on, TLS offered
#                            with a certificate for `localhost` from a throwaway CA; the last
#                            line printed is `export HOOKLINE_DATABASE_URL=… HOOKLINE_DATABASE_CA=…`
#                            (the CA's PEM file, for `sslrootcert`)
#   hack/postgres.sh down    stop exactly what `up` started and remove its data
#   hack/postgres.sh stop    stop the server as a crash would (`-m immediate`), keeping its data
#   hack/postgres.sh start   start it again on the same port after `stop`
#   hack/postgres.sh env     print that `export` line of a running server
#
# The state lives in $HOOKLINE_POSTGRES_DIR (default target/postgres). The server trusts local
# connections (it listens on 127.0.0.1 only). As root it runs as the `postgres` user (PostgreSQL
# refuses to run as root), with its files in a private directory under /tmp that this user can
# reach wherever the checkout is; the state directory records where.
# HOOKLINE_POSTGRES_LISTEN=ADDR/BITS also listens on ADDR and trusts clients from that network
# (the test node's pods: 10.244.0.1/24, a database outside the cluster as a managed one would be).
# HOOKLINE_POSTGRES_OPTIONS adds server options, e.g. for profiling:
#   "-c log_min_duration_statement=8 -c log_checkpoints=on -c logging_collector=on -c log_directory=/tmp/pglog"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${HOOKLINE_POSTGRES_DIR:-$ROOT/target/postgres}
PG_VERSION=15

log() { printf '[postgres] %s\n' "$*" >&2; }
die() { printf '[postgres] error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=hack/lib.sh
. "$ROOT/hack/lib.sh"

bin_dir() { echo "/usr/lib/postgresql/$PG_VERSION/bin"; }

install_postgres() {
  [ -x "$(bin_dir)/initdb" ] && return 0
  log "installing postgresql-$PG_VERSION from apt"
  apt_install "postgresql-$PG_VERSION" || die "apt-get install postgresql-$PG_VERSION failed"
  [ -x "$(bin_dir)/initdb" ] || die "postgresql-$PG_VERSION is installed but $(bin_dir)/initdb is missing"
}

# pg CMD ARGS: run a PostgreSQL program as the owner of the state directory.
pg() {
  if [ "$(id -u)" -eq 0 ]; then
    # From /: the postgres user may not be allowed into the current directory.
    (cd / && runuser -u postgres -- "$(bin_dir)/$1" "${@:2}")
  else
    "$(bin_dir)/$1" "${@:2}"
  fi
}

# Where the server's files are: the state directory, or (as root) the one it records.
pg_dir() { if [ -f "$STATE_DIR/pg-dir" ]; then cat "$STATE_DIR/pg-dir"; else echo "$STATE_DIR"; fi; }
data() { echo "$(pg_dir)/data"; }

url() { echo "postgres://postgres@127.0.0.1:$(cat "$STATE_DIR/port")/postgres"; }
exports() { echo "export HOOKLINE_DATABASE_URL=$(url) HOOKLINE_DATABASE_CA=$(pg_dir)/tls/ca.crt"; }

# A CA and a certificate for `localhost` signed by it (not for 127.0.0.1: a test can tell
# sslmode=verify-full from verify-ca by the host it connects to).
make_certificates() {
  local tls; tls="$(pg_dir)/tls"
  command -v openssl >/dev/null || apt_install openssl || die "openssl is missing and could not be installed"
  mkdir -p "$tls"
  ( cd "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj /CN=hookline-test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
      -keyout ca.key -out ca.crt
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
      -keyout server.key -out server.csr
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile server.ext -out server.crt
    chmod 600 server.key ) >"$STATE_DIR/openssl.log" 2>&1 || { cat "$STATE_DIR/openssl.log" >&2; die "making certificates failed"; }
  [ "$(id -u)" -ne 0 ] || chown -R postgres: "$tls"
}

running() { [ -f "$(data)/postmaster.pid" ] && pg pg_ctl -D "$(data)" status >/dev/null 2>&1; }

start_server() {
  local port dir listen=127.0.0.1; port=$(cat "$STATE_DIR/port"); dir=$(pg_dir)
  [ ! -f "$STATE_DIR/listen" ] || listen="127.0.0.1,$(cut -d/ -f1 "$STATE_DIR/listen")"
  pg pg_ctl -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-k $dir -p $port -c listen_addresses=$listen -c fsync=on -c synchronous_commit=on -c max_connections=300 \
       -c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key ${HOOKLINE_POSTGRES_OPTIONS:-}" \
    start >/dev/null || { tail -n 20 "$dir/postgres.log" >&2; die "PostgreSQL did not start"; }
}

up() {
  install_postgres
  if running; then
    log "already running"
  else
    down
    mkdir -p "$STATE_DIR"
    free_port >"$STATE_DIR/port"
    if [ "$(id -u)" -eq 0 ]; then
      mktemp -d /tmp/hookline-postgres.XXXXXX >"$STATE_DIR/pg-dir"
      chown postgres: "$(pg_dir)"
    fi
    pg initdb -D "$(data)" -U postgres --auth=trust --no-sync >"$STATE_DIR/initdb.log" 2>&1 \
      || { cat "$STATE_DIR/initdb.log" >&2; die "initdb failed"; }
    make_certificates
    if [ -n "${HOOKLINE_POSTGRES_LISTEN:-}" ]; then
      echo "$HOOKLINE_POSTGRES_LISTEN" >"$STATE_DIR/listen"
      local network
      network=$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1], strict=False))' "$HOOKLINE_POSTGRES_LISTEN")
      echo "host all all $network trust" >>"$(data)/pg_hba.conf"
    fi
    start_server
    log "PostgreSQL $PG_VERSION on 127.0.0.1:$(cat "$STATE_DIR/port")${HOOKLINE_POSTGRES_LISTEN:+ and ${HOOKLINE_POSTGRES_LISTEN%/*}}, data in $(data)"
  fi
  exports
}

down() {
  if [ -d "$(data)" ]; then
    pg pg_ctl -D "$(data)" stop -m immediate >/dev/null 2>&1 || true
  fi
  [ ! -f "$STATE_DIR/pg-dir" ] || rm -rf "$(pg_dir)"
  rm -rf "$STATE_DIR"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop) pg pg_ctl -D "$(data)" stop -m immediate >/dev/null ;;
  start) start_server ;;
  env) running || die "not running (hack/postgres.sh up)"; exports ;;
  *) echo "usage: $0 up|down|stop|start|env" >&2; exit 2 ;;
esac
