#!/usr/bin/env bash
# Install roomcast into .venv and run `roomcast dev`: the whole chat in one process, web client
# on http://127.0.0.1:8000, history kept in ./.roomcast. Extra arguments go to `roomcast dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# `dev`: SecantusDB, the database `roomcast dev` runs (an extra: the services do not need it).
.venv/bin/python -m pip install -q -e '.[dev]'
exec .venv/bin/roomcast dev "$@"
