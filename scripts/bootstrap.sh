#!/usr/bin/env bash
# Creates .venv and installs the Python requirements into it (idempotent).
#   scripts/bootstrap.sh          runtime requirements
#   scripts/bootstrap.sh dev      runtime + test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."
want=requirements.txt
[ "${1:-}" = "dev" ] && want=requirements-dev.txt
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)-$want"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$want"
  touch "$stamp"
fi
