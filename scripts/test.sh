#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv, install, lint, PostgreSQL, pytest on SQLite and
# on PostgreSQL. `make test` runs this; so does .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q -U pip
fi
echo "== installing parity-server and test dependencies"
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v -e "is ignored" -e "^$" || true
.venv/bin/python -c "import parity, pytest, fastapi" || { echo "install failed" >&2; exit 1; }

if ! command -v bwrap >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing bubblewrap (the runner's command sandbox)"
  (apt-get install -y -qq bubblewrap || (apt-get update -qq && apt-get install -y -qq bubblewrap)) >/dev/null 2>&1 \
    || echo "bubblewrap unavailable: the runner falls back to a dedicated uid"
fi

echo "== lint"
make --no-print-directory lint

echo "== PostgreSQL"
eval "$(scripts/ensure_postgres.sh)"
echo "using $PARITY_TEST_DATABASE_URL"

PYTEST_ARGS=(--durations=15 -p no:cacheprovider "$@")
echo "== pytest on SQLite"
PARITY_TEST_DB=sqlite .venv/bin/pytest "${PYTEST_ARGS[@]}"
echo "== pytest on PostgreSQL"
PARITY_TEST_DB=postgres .venv/bin/pytest "${PYTEST_ARGS[@]}"
