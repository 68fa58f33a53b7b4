#!/usr/bin/env bash
# Prints `export PARITY_TEST_REDIS_URL=...` for a reachable Redis (the stream-bus tests), starting
# one if needed:
#   1. $PARITY_TEST_REDIS_URL when it answers;
#   2. a server on 127.0.0.1:6379 (or $PARITY_REDIS_DEFAULT_URL);
#   3. an installed redis-server, started on a free loopback port without persistence.
# Prints nothing when none is available (nothing is installed): the Redis tests then skip,
# saying why. Diagnostics go to stderr so the output can be eval'ed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
source scripts/service_lib.sh

answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys
import redis
redis.Redis.from_url(sys.argv[1], socket_timeout=2, socket_connect_timeout=2).ping()
PYEOF
}

url_for() { echo "redis://127.0.0.1:$1/0"; }

start() {
  redis-server --bind 127.0.0.1 --port "$1" --save '' --appendonly no --daemonize yes \
    --dir "$2" --logfile "$2/redis.log" --pidfile "$2/redis.pid" >&2
}

ensure_service PARITY_TEST_REDIS_URL "${PARITY_REDIS_DEFAULT_URL:-redis://127.0.0.1:6379/0}" \
  /tmp/parity-test-redis "$(command -v redis-server || true)" Redis
