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
source scripts/service_lib.sh

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

url_for() { echo "nats://127.0.0.1:$1"; }

start() {
  setsid nohup "$NATS_SERVER" -a 127.0.0.1 -p "$1" -l "$2/nats.log" -P "$2/nats.pid" \
    >/dev/null 2>&1 < /dev/null &
}

NATS_SERVER=$(command -v nats-server || ls /usr/sbin/nats-server 2>/dev/null || true)
ensure_service PARITY_TEST_NATS_URL "${PARITY_NATS_DEFAULT_URL:-nats://127.0.0.1:4222}" \
  /tmp/parity-test-nats "$NATS_SERVER" NATS
