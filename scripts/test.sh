#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (Debian's
# redis-server, postgresql and chromium; the Python requirements; RocketMQ's jars), starts
# Redis, PostgreSQL and RocketMQ on loopback, runs ruff, mypy and pytest, and stops the
# services again whatever happens. Extra arguments go to pytest.
#
# The suite's services have their own ports and folder, distinct from the dev defaults of
# scripts/services.sh and scripts/rocketmq.sh, so a run never touches (or stops) a dev
# cluster on the same machine. Each may be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

export GATEWAY_SERVICES_DIR="${GATEWAY_SERVICES_DIR:-/tmp/gateway-test-services}"
export GATEWAY_TEST_REDIS_PORT="${GATEWAY_TEST_REDIS_PORT:-6391}"
export GATEWAY_TEST_PG_PORT="${GATEWAY_TEST_PG_PORT:-5441}"
# tests/cluster restarts RocketMQ through scripts/rocketmq.sh: these reach it too.
export ROCKETMQ_RUN_DIR="${ROCKETMQ_RUN_DIR:-$GATEWAY_SERVICES_DIR/rocketmq}"
export ROCKETMQ_NAMESRV_PORT="${ROCKETMQ_NAMESRV_PORT:-19876}"
export ROCKETMQ_GRPC_PORT="${ROCKETMQ_GRPC_PORT:-18081}"
export ROCKETMQ_REMOTING_PORT="${ROCKETMQ_REMOTING_PORT:-18080}"
export ROCKETMQ_BROKER_PORT="${ROCKETMQ_BROKER_PORT:-20911}"

scripts/services.sh install
scripts/bootstrap.sh dev

# The suite's data is scratch: wiped before the run (a killed run may have left some) and after.
cleanup() {
  scripts/rocketmq.sh stop >/dev/null 2>&1 || true
  scripts/services.sh reset redis || true
  scripts/services.sh reset postgres || true
}
trap cleanup EXIT

scripts/services.sh reset redis
scripts/services.sh reset postgres
scripts/services.sh start redis
scripts/services.sh start postgres
scripts/rocketmq.sh start

export GATEWAY_TEST_REQUIRE_SERVICES=1
export GATEWAY_TEST_REDIS_URL="redis://127.0.0.1:$GATEWAY_TEST_REDIS_PORT/0"
export GATEWAY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$GATEWAY_TEST_PG_PORT/postgres"
export GATEWAY_TEST_ROCKETMQ_ENDPOINT="127.0.0.1:$ROCKETMQ_GRPC_PORT"

.venv/bin/ruff check .
.venv/bin/mypy .

# Given paths or -k, one plain run of what was asked.
for arg in "$@"; do
  if [[ "$arg" != -* || "$arg" == -k* || "$arg" == -m* ]]; then
    exec .venv/bin/python -m pytest "$@"
  fi
done
# The whole suite: most tests wait on beats, timeouts and other processes far more than
# they compute, so they run in parallel, a file per worker (pytest-xdist), the cluster
# tests among them: each worker's RocketMQ clusters get a topic of their own, and Redis keys
# and PostgreSQL databases are per cluster already. Files go out in collection order (the
# long ones of tests/bench, tests/clients and tests/cluster first, the many short unit files
# last to fill the tail), not xdist's default of most tests first, which started the long
# files last. The `serial` tests stop or restart the suite's one RocketMQ or Redis: they
# run after, alone. Exit code 5 is "nothing selected".
status=0
started=$SECONDS
.venv/bin/python -m pytest -n "${GATEWAY_TEST_WORKERS:-4}" --dist loadfile --no-loadscope-reorder \
  -m "not serial" "$@" || status=$?
echo "test.sh: parallel tests took $((SECONDS - started)) s"
started=$SECONDS
.venv/bin/python -m pytest -m serial "$@" || { rc=$?; [ "$rc" -eq 5 ] || status=$rc; }
echo "test.sh: serial tests took $((SECONDS - started)) s"
exit "$status"
