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
DEFAULT_URL=${PARITY_REDIS_DEFAULT_URL:-redis://127.0.0.1:6379/0}
DIR=/tmp/parity-test-redis

answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import sys
import redis
redis.Redis.from_url(sys.argv[1], socket_timeout=2, socket_connect_timeout=2).ping()
PYEOF
}

emit() { echo "export PARITY_TEST_REDIS_URL='$1'"; }

if [ -n "${PARITY_TEST_REDIS_URL:-}" ] && answers "$PARITY_TEST_REDIS_URL"; then
  emit "$PARITY_TEST_REDIS_URL"; exit 0
fi
if answers "$DEFAULT_URL"; then emit "$DEFAULT_URL"; exit 0; fi
if [ -f "$DIR/port" ]; then
  url="redis://127.0.0.1:$(cat "$DIR/port")/0"
  if answers "$url"; then emit "$url"; exit 0; fi
fi

if command -v redis-server >/dev/null; then
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$DIR"
  echo "starting redis-server on 127.0.0.1:$port" >&2
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize yes \
    --dir "$DIR" --logfile "$DIR/redis.log" --pidfile "$DIR/redis.pid" >&2
  echo "$port" > "$DIR/port"
  url="redis://127.0.0.1:$port/0"
  for _ in $(seq 50); do
    if answers "$url"; then emit "$url"; exit 0; fi
    sleep 0.1
  done
  echo "redis-server did not answer (see $DIR/redis.log)" >&2
  exit 0
fi
echo "no Redis (none at $DEFAULT_URL, no redis-server installed): the Redis tests are skipped" >&2
