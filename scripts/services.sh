#!/usr/bin/env bash
# Local Redis and PostgreSQL for the test suite, on loopback and private ports, with their
# data in a scratch folder.
#   scripts/services.sh install              apt-get the Debian packages if missing (root):
#                                            redis-server, postgresql, chromium, prometheus
#   scripts/services.sh start|stop redis|postgres
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
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

redis_start() {
  mkdir -p "$RUN_DIR/redis"
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$RUN_DIR/redis" --save "" \
    --appendonly no --daemonize yes --pidfile "$RUN_DIR/redis/redis.pid" \
    --logfile "$RUN_DIR/redis/redis.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis did not start; see $RUN_DIR/redis/redis.log" >&2; exit 1
}

redis_stop() {
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}

as_pg() {
  # PostgreSQL refuses to run as root.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
  [ -n "$PG_BIN" ] || { echo "postgresql is not installed (scripts/services.sh install)" >&2; exit 1; }
  local data="$RUN_DIR/pg"
  mkdir -p "$RUN_DIR"
  if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then return; fi
  rm -rf "$data"; mkdir -p "$data"
  [ "$(id -u)" -eq 0 ] && chown postgres "$data"
  as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
}

pg_stop() {
  [ -n "$PG_BIN" ] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$RUN_DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  install) install ;;
  start) case "${2:-}" in redis) redis_start ;; postgres) pg_start ;; *) echo "start redis|postgres" >&2; exit 2 ;; esac ;;
  stop) case "${2:-}" in redis) redis_stop ;; postgres) pg_stop ;; *) echo "stop redis|postgres" >&2; exit 2 ;; esac ;;
  *) echo "usage: $0 install | start|stop redis|postgres" >&2; exit 2 ;;
esac
