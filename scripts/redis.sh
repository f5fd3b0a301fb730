#!/usr/bin/env bash
# Makes sure a Redis answers at RSTREAM_REDIS_URL's host and port (default 127.0.0.1:6379).
#   scripts/redis.sh ensure   start a private redis-server there when none answers
#   scripts/redis.sh stop     stop the one this script started (if any)
set -euo pipefail
url="${RSTREAM_REDIS_URL:-redis://127.0.0.1:6379/0}"
hostport="${url#*://}"; hostport="${hostport%%/*}"; hostport="${hostport##*@}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$host" ] && port=6379
pidfile="${TMPDIR:-/tmp}/rstream-redis-$port.pid"

answers() {
    python3 - "$host" "$port" <<'PY'
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}

case "${1:-ensure}" in
ensure)
    answers && exit 0
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "no Redis answers at $host:$port and redis-server is not installed:" >&2
        echo "  install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)" >&2
        echo "  or set RSTREAM_REDIS_URL to a Redis you have" >&2
        exit 1
    fi
    redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
        --pidfile "$pidfile" --logfile "${TMPDIR:-/tmp}/rstream-redis-$port.log" >/dev/null
    for _ in $(seq 50); do answers && { echo "started redis-server on $host:$port" >&2; exit 0; }; sleep 0.1; done
    echo "redis-server did not start on $host:$port; see ${TMPDIR:-/tmp}/rstream-redis-$port.log" >&2
    exit 1
    ;;
stop)
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null && rm -f "$pidfile"
    exit 0
    ;;
*) echo "usage: $0 ensure|stop" >&2; exit 2 ;;
esac
