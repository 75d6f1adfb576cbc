#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (Debian's
# redis-server, postgresql and chromium; the Python requirements; RocketMQ's jars), starts
# Redis, PostgreSQL and RocketMQ on loopback, runs ruff, mypy and pytest, and stops the
# services again whatever happens. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh install
scripts/bootstrap.sh dev

cleanup() {
  scripts/rocketmq.sh stop >/dev/null 2>&1 || true
  scripts/services.sh stop redis || true
  scripts/services.sh stop postgres || true
}
trap cleanup EXIT

scripts/services.sh start redis
scripts/services.sh start postgres
scripts/rocketmq.sh start

export GATEWAY_TEST_REQUIRE_SERVICES=1
export GATEWAY_TEST_REDIS_URL="redis://127.0.0.1:${GATEWAY_TEST_REDIS_PORT:-6390}/0"
export GATEWAY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:${GATEWAY_TEST_PG_PORT:-5440}/postgres"
export GATEWAY_TEST_ROCKETMQ_ENDPOINT="127.0.0.1:${ROCKETMQ_GRPC_PORT:-8081}"

.venv/bin/ruff check .
.venv/bin/mypy .
.venv/bin/python -m pytest "$@"
