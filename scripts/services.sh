# Sourced by scripts/test.sh: a throwaway PostgreSQL and Redis on loopback for the
# platform tests (the ledger shared by two servers, rate limits shared through Redis).
# Installs Debian's packages when they are missing, starts both on free ports in a temp
# directory, exports TOKENFAB_TEST_PG and TOKENFAB_TEST_REDIS, and stops them on exit.
# TOKENFAB_TEST_PG_CTL is a pg_ctl bound to that PostgreSQL (its data directory, its
# user), for the fault tests that restart it mid-load (`$TOKENFAB_TEST_PG_CTL restart`).

services_dir=""

services_stop() {
  [ -n "$services_dir" ] || return 0
  if [ -f "$services_dir/redis.pid" ]; then
    kill "$(cat "$services_dir/redis.pid")" 2>/dev/null || true
  fi
  if [ -f "$services_dir/pg/postmaster.pid" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$services_dir/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$services_dir"
  services_dir=""
}

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user the package
# creates.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

services_start() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$pg_bin" ] || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} (Debian packages)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi

  services_dir=$(mktemp -d /tmp/tokenfab-services.XXXXXX)
  chmod 755 "$services_dir"
  trap services_stop EXIT

  local pg_port redis_port
  pg_port=$(free_port)
  mkdir "$services_dir/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$services_dir/pg"
  as_pg "$pg_bin/initdb" -D "$services_dir/pg" -A trust -U postgres >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$services_dir/pg" -l "$services_dir/pg/log" -w \
    -o "-p $pg_port -k $services_dir/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres tokenfab_test
  export TOKENFAB_TEST_PG="postgres://postgres@127.0.0.1:$pg_port/tokenfab_test"
  local as_user=""
  [ "$(id -u)" = 0 ] && as_user="runuser -u postgres --"
  printf '#!/bin/sh\nexec %s %q -D %q "$@"\n' "$as_user" "$pg_bin/pg_ctl" "$services_dir/pg" \
    >"$services_dir/pg_ctl"
  chmod 755 "$services_dir/pg_ctl"
  export TOKENFAB_TEST_PG_CTL="$services_dir/pg_ctl"

  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$services_dir/redis.pid" --dir "$services_dir" \
    --logfile "$services_dir/redis.log"
  for _ in $(seq 50); do
    [ -f "$services_dir/redis.pid" ] && break
    sleep 0.1
  done
  export TOKENFAB_TEST_REDIS="redis://127.0.0.1:$redis_port/"
  echo "PostgreSQL: $TOKENFAB_TEST_PG"
  echo "Redis: $TOKENFAB_TEST_REDIS"
}
