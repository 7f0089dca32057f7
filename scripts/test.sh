#!/usr/bin/env bash
# Install everything roomcast's tests need, then run them all: lint, types, and every test group.
#
#   bash scripts/test.sh            # everything (what CI runs)
#   bash scripts/test.sh -m unit    # extra arguments go to pytest
#
# It creates .venv (Python packages), makes sure RabbitMQ answers on 127.0.0.1:5672 (installing
# Debian's rabbitmq-server when nothing does), installs Debian's Chromium for the browser tests
# and the offline checkers for the deployment files. SecantusDB comes from PyPI (the `dev` extra);
# the tests start their own servers. The licence check builds a venv of its own with a plain
# `pip install .` and fails on copyleft in what that installs (scripts/check-licenses.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,bench,dev]'

bash scripts/ensure-rabbitmq.sh
if [ -f scripts/install-deploy-tools.sh ]; then
    bash scripts/install-deploy-tools.sh .venv
fi
if [ -f scripts/install-browser.sh ]; then
    bash scripts/install-browser.sh .venv
fi

echo "== licences of the runtime install"
.venv/bin/python scripts/check-licenses.py

echo "== lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
bash scripts/typecheck.sh

echo "== tests"
# Two workers, one test file at a time each: every file starts servers of its own (exchanges,
# databases and ports are per test), and most of a test's time is spent waiting on them.
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
