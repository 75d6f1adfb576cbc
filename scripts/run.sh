#!/usr/bin/env bash
# Installs the gateway and starts one node on the embedded default: SQLite in ./var,
# in-memory channel layer, in-process broker. Arguments go to `rungateway`
# (for example --host 0.0.0.0 --port 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python manage.py rungateway "$@"
