#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine: local directory storage, a local
# Redis, one CPU (or per-GPU) worker. Sets up the venv, makes sample images from photos that
# ship in installed packages, submits them, waits with a progress bar, prints a summary and a
# few result lines, and stops what it started.
#   bash scripts/demo.sh [COUNT]        (default 128 images)
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-128}"

venv=$(bash scripts/venv.sh dev)
export PATH="$venv/bin:$PATH"
export RSTREAM_STORAGE_ROOT="${RSTREAM_STORAGE_ROOT:-$PWD/rstream-data}"
export RSTREAM_MODEL="${RSTREAM_MODEL:-random:resnet18}"
export RSTREAM_REDIS_URL="${RSTREAM_REDIS_URL:-redis://127.0.0.1:6379/0}"

started_redis=""
redis_log=$(mktemp)
if ! bash scripts/redis.sh ensure 2>"$redis_log"; then
    cat "$redis_log" >&2; exit 1
fi
cat "$redis_log" >&2
if grep -q "started redis-server" "$redis_log"; then started_redis=1; fi

log="$RSTREAM_STORAGE_ROOT/demo-worker.log"
mkdir -p "$RSTREAM_STORAGE_ROOT"
rstream worker --concurrency 2 >"$log" 2>&1 &
worker=$!
cleanup() {
    kill -TERM "$worker" 2>/dev/null && wait "$worker" 2>/dev/null || true
    if [ -n "$started_redis" ]; then bash scripts/redis.sh stop && echo "stopped the redis-server it started" >&2; fi
}
trap cleanup EXIT

prefix="demo/images-$(date +%Y%m%d-%H%M%S)/"
rstream samples "$prefix" --count "$count"
echo "worker log: $log"
for _ in $(seq 600); do grep -q "ready\." "$log" && break; kill -0 "$worker" 2>/dev/null || { cat "$log"; exit 1; }; sleep 0.2; done

job=$(rstream submit "$prefix")
echo "submitted job $job (model $RSTREAM_MODEL)"
rstream wait "$job"
rstream status "$job"
echo "first result lines:"
rstream results "$job" | head -n 3
echo "manifest: $RSTREAM_STORAGE_ROOT/results/$job/manifest.json"
