#!/usr/bin/env bash
# Local Redis and PostgreSQL for a dev cluster (and, with other ports and folder, the test
# suite: scripts/test.sh), on loopback and private ports, with their data in a folder.
#   scripts/services.sh install              apt-get the Debian packages if missing (root):
#                                            redis-server, postgresql, chromium, prometheus,
#                                            nodejs and npm (clients/js's tests)
#   scripts/services.sh start|stop redis|postgres
#   scripts/services.sh reset redis|postgres stop it and wipe its data
# Data survives stop and start: PostgreSQL is initialised only when its folder holds no
# cluster; Redis snapshots to its folder on shutdown and loads it on start.
# Folder: GATEWAY_SERVICES_DIR (/tmp/gateway-services).
# Ports: GATEWAY_TEST_REDIS_PORT (6390), GATEWAY_TEST_PG_PORT (5440).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${GATEWAY_SERVICES_DIR:-/tmp/gateway-services}"
REDIS_PORT="${GATEWAY_TEST_REDIS_PORT:-6390}"
PG_PORT="${GATEWAY_TEST_PG_PORT:-5440}"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"

install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ -n "$PG_BIN" ] || missing+=(postgresql)
  command -v chromium >/dev/null || missing+=(chromium)
  # promtool checks and unit-tests deploy/prometheus/alerts.yml (tests/monitoring).
  command -v promtool >/dev/null || missing+=(prometheus)
  # clients/js runs its tests in Node too, with the ws package from npm (tests/clients).
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

redis_start() {
  mkdir -p "$RUN_DIR/redis"
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "redis already running on 127.0.0.1:$REDIS_PORT"; return
  fi
  # No periodic snapshots (they would slow the suite); one on shutdown, loaded on start.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN_DIR/redis" --save "" \
    --dbfilename dump.rdb --appendonly no --daemonize yes \
    --pidfile "$RUN_DIR/redis/redis.pid" --logfile "$RUN_DIR/redis/redis.log"
  for _ in $(seq 50); do
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
      echo "redis on 127.0.0.1:$REDIS_PORT, data in $RUN_DIR/redis (wipe: $0 reset redis)"
      return
    fi
    sleep 0.1
  done
  echo "redis did not start; see $RUN_DIR/redis/redis.log" >&2; exit 1
}

redis_stop() {
  # SAVE on shutdown keeps the data for the next start.
  redis-cli -p "$REDIS_PORT" shutdown save >/dev/null 2>&1 || true
}

redis_reset() {
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$RUN_DIR/redis"
  echo "redis stopped; its data in $RUN_DIR/redis wiped"
}

as_pg() {
  # PostgreSQL refuses to run as root.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  [ -n "$PG_BIN" ] || { echo "postgresql is not installed (scripts/services.sh install)" >&2; exit 1; }
  local data="$RUN_DIR/pg"
  mkdir -p "$RUN_DIR"
  if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    echo "postgres already running on 127.0.0.1:$PG_PORT"; return
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    # No cluster here yet (first start, or after a reset): create one. A folder with a
    # cluster in it is never wiped here: that is what `reset postgres` is for.
    rm -rf "$data"; mkdir -p "$data"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$data"; fi
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    echo "postgres: new cluster in $data"
  fi
  # fsync=off: fast, and safe across a clean stop; a machine crash can corrupt the data.
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
  echo "postgres on 127.0.0.1:$PG_PORT, data in $data (wipe: $0 reset postgres)"
}

pg_stop() {
  [ -n "$PG_BIN" ] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$RUN_DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
}

pg_reset() {
  pg_stop
  rm -rf "$RUN_DIR/pg"
  echo "postgres stopped; its data in $RUN_DIR/pg wiped"
}

case "${1:-}" in
  install) install ;;
  start) case "${2:-}" in redis) redis_start ;; postgres) pg_start ;; *) echo "start redis|postgres" >&2; exit 2 ;; esac ;;
  stop) case "${2:-}" in redis) redis_stop ;; postgres) pg_stop ;; *) echo "stop redis|postgres" >&2; exit 2 ;; esac ;;
  reset) case "${2:-}" in redis) redis_reset ;; postgres) pg_reset ;; *) echo "reset redis|postgres" >&2; exit 2 ;; esac ;;
  *) echo "usage: $0 install | start|stop|reset redis|postgres" >&2; exit 2 ;;
esac
