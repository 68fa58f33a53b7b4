#!/usr/bin/env bash
# Prints `export PARITY_TEST_NATS_URL=...` for a reachable NATS server (the NATS stream-bus tests),
# starting one if needed:
#   1. $PARITY_TEST_NATS_URL when it answers;
#   2. a server on 127.0.0.1:4222 (or $PARITY_NATS_DEFAULT_URL);
#   3. an installed nats-server, started on a free loopback port (core NATS: nothing on disk).
# Prints nothing when none is available (nothing is installed): the NATS tests then skip, saying
# why. Diagnostics go to stderr so the output can be eval'ed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEFAULT_URL=${PARITY_NATS_DEFAULT_URL:-nats://127.0.0.1:4222}
DIR=/tmp/parity-test-nats

answers() {  # a NATS server greets every connection with an INFO line
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import socket, sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
with socket.create_connection((u.hostname, u.port or 4222), timeout=2) as s:
    s.settimeout(2)
    assert s.recv(5) == b"INFO "
PYEOF
}

emit() { echo "export PARITY_TEST_NATS_URL='$1'"; }

if [ -n "${PARITY_TEST_NATS_URL:-}" ] && answers "$PARITY_TEST_NATS_URL"; then
  emit "$PARITY_TEST_NATS_URL"; exit 0
fi
if answers "$DEFAULT_URL"; then emit "$DEFAULT_URL"; exit 0; fi
if [ -f "$DIR/port" ]; then
  url="nats://127.0.0.1:$(cat "$DIR/port")"
  if answers "$url"; then emit "$url"; exit 0; fi
fi

NATS_SERVER=$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null || true)
if [ -n "$NATS_SERVER" ]; then
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$DIR"
  echo "starting nats-server on 127.0.0.1:$port" >&2
  setsid nohup "$NATS_SERVER" -a 127.0.0.1 -p "$port" -l "$DIR/nats.log" -P "$DIR/nats.pid" \
    >/dev/null 2>&1 < /dev/null &
  echo "$port" > "$DIR/port"
  url="nats://127.0.0.1:$port"
  for _ in $(seq 50); do
    if answers "$url"; then emit "$url"; exit 0; fi
    sleep 0.1
  done
  echo "nats-server did not answer (see $DIR/nats.log)" >&2
  exit 0
fi
echo "no NATS (none at $DEFAULT_URL, no nats-server installed): the NATS tests are skipped" >&2
