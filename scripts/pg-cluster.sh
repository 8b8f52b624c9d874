#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for vprov's tests (and for trying `[store] url`).
#
#   scripts/pg-cluster.sh start DIR   creates DIR (must not hold a cluster yet), initdb
#                                     there, starts postgres on 127.0.0.1 on a free
#                                     port and a socket in DIR, waits until it accepts
#                                     connections (pg_isready), prints its URL
#   scripts/pg-cluster.sh stop DIR    stops it (fast shutdown) and removes DIR
#
# The cluster's superuser is `vprov` with password `vprov`, loopback only (scram). It
# also accepts TLS (ssl=on) with a certificate for 127.0.0.1 from a throwaway CA made
# here, DIR/ca.crt (pass it as `sslrootcert`). Run
# as root, the server runs as the unprivileged `postgres` user (root cannot run
# postgres); otherwise as the calling user. The binaries are found through
# `pg_config --bindir` or /usr/lib/postgresql/*/bin (Debian keeps them off PATH).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir)
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  fi
  # The newest installed major version.
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  echo "PostgreSQL server binaries (initdb) not found: run scripts/install-deps.sh" >&2
  exit 1
}

# Runs a command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case $cmd in
start)
  bin=$(bindir)
  if [ -e "$dir/data/PG_VERSION" ]; then
    echo "$dir already holds a cluster; stop it first" >&2
    exit 1
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
    chmod 0700 "$dir"
  fi
  pwfile="$dir/pw"
  as_owner sh -c "umask 077; echo vprov > '$pwfile'"
  as_owner "$bin/initdb" -D "$dir/data" -U vprov --pwfile="$pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
  }
  # TLS: a throwaway CA (DIR/ca.crt) and its certificate for the loopback address the
  # cluster listens on (a self-signed server certificate is not a valid trust anchor).
  as_owner sh -c "cd '$dir' && umask 077 &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=vprov-test-ca \
      -keyout ca.key -out ca.crt &&
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr &&
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.crt" >"$dir/openssl.log" 2>&1 || {
    cat "$dir/openssl.log" >&2
    exit 1
  }
  # A busy machine may take the chosen port between here and the bind: try a few.
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" >/dev/null; then
      break
    fi
    port=
  done
  [ -n "$port" ] || {
    tail -20 "$dir/server.log" >&2
    exit 1
  }
  # pg_ctl -w already waited; pg_isready confirms the TCP listener answers.
  for _ in $(seq 1 120); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
  done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" || {
    tail -20 "$dir/server.log" >&2
    exit 1
  }
  echo "$port" >"$dir/port"
  echo "postgres://vprov:vprov@127.0.0.1:$port/postgres"
  ;;
stop)
  [ -d "$dir" ] || exit 0
  if [ -e "$dir/data/postmaster.pid" ]; then
    bin=$(bindir)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
  fi
  rm -rf "$dir"
  ;;
*) usage ;;
esac
