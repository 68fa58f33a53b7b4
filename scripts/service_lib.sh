# Shared by ensure_redis.sh and ensure_nats.sh (sourced): find a reachable test service or start
# one, then print `export VAR='URL'` for eval. The sourcing script defines:
#   answers URL      exit 0 when a server at URL answers
#   url_for PORT     the URL of a server started on 127.0.0.1:PORT
#   start PORT DIR   start the installed server there (returns at once; it is polled)
# and calls: ensure_service VAR DEFAULT_URL DIR BINARY NAME. Diagnostics go to stderr.

emit() { echo "export $1='$2'"; }

ensure_service() {
  local var=$1 default_url=$2 dir=$3 binary=$4 name=$5 given url port
  given=${!var:-}
  if [ -n "$given" ] && answers "$given"; then emit "$var" "$given"; return 0; fi
  if answers "$default_url"; then emit "$var" "$default_url"; return 0; fi
  if [ -f "$dir/port" ]; then
    url=$(url_for "$(cat "$dir/port")")
    if answers "$url"; then emit "$var" "$url"; return 0; fi
  fi
  if [ -z "$binary" ]; then
    echo "no $name (none at $default_url, no $name server installed): the $name tests are skipped" >&2
    return 0
  fi
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  echo "starting $binary on 127.0.0.1:$port" >&2
  start "$port" "$dir"
  echo "$port" > "$dir/port"
  url=$(url_for "$port")
  for _ in $(seq 50); do
    if answers "$url"; then emit "$var" "$url"; return 0; fi
    sleep 0.1
  done
  echo "$binary did not answer (see its log in $dir)" >&2
  return 0
}
