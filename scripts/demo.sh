#!/usr/bin/env bash
# The main job on the embedded default, on a fresh machine: local directory storage, a local
# Redis, a trainer and a CPU (or per-GPU) worker. Sets up the venv, writes scikit-learn's
# handwritten digits as labelled images, fine-tunes a resnet18 on them from a random init
# through the trainer, promotes it through the gate, scores the held-out digits through the
# queue and the worker, prints the accuracy computed from the result lines and a few lines,
# and stops what it started.
#   bash scripts/demo.sh                  the whole loop (a few minutes on 2 CPU cores)
#   bash scripts/demo.sh --quick [COUNT]  the plumbing only: COUNT (128) sample photos scored
#                                         with seeded random weights (labels class_N)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=""
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi
count="${1:-128}"

venv=$(bash scripts/venv.sh dev)
export PATH="$venv/bin:$PATH"
export RSTREAM_STORAGE_ROOT="${RSTREAM_STORAGE_ROOT:-$PWD/rstream-data}"
export RSTREAM_REDIS_URL="${RSTREAM_REDIS_URL:-redis://127.0.0.1:6379/0}"

started_redis=""
redis_log=$(mktemp)
if ! bash scripts/redis.sh ensure 2>"$redis_log"; then
    cat "$redis_log" >&2; exit 1
fi
cat "$redis_log" >&2
if grep -q "started redis-server" "$redis_log"; then started_redis=1; fi

mkdir -p "$RSTREAM_STORAGE_ROOT"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$started_redis" ]; then bash scripts/redis.sh stop && echo "stopped the redis-server it started" >&2; fi
}
trap cleanup EXIT

start_worker() {  # start_worker LOG [ARGS...]: a worker in the background, its log in LOG
    local log="$1"; shift
    rstream worker "$@" >"$log" 2>&1 &
    pids+=("$!")
}

wait_ready() {  # wait_ready LOG PID
    for _ in $(seq 600); do
        grep -q "ready\." "$1" && return 0
        kill -0 "$2" 2>/dev/null || { cat "$1"; exit 1; }
        sleep 0.2
    done
    echo "no worker became ready; see $1" >&2; exit 1
}

shown() {  # a path as printed: relative to here when it is under here (no machine paths)
    case "$1" in "$PWD"/*) echo "./${1#"$PWD"/}" ;; *) echo "$1" ;; esac
}

stamp=$(date +%Y%m%d-%H%M%S)
if [ -n "$quick" ]; then
    export RSTREAM_MODEL="${RSTREAM_MODEL:-random:resnet18}"
    start_worker "$RSTREAM_STORAGE_ROOT/demo-worker.log" --concurrency 2
    prefix="demo/images-$stamp/"
    rstream samples "$prefix" --count "$count"
    echo "worker log: $(shown "$RSTREAM_STORAGE_ROOT/demo-worker.log")"
    wait_ready "$RSTREAM_STORAGE_ROOT/demo-worker.log" "${pids[0]}"
    job=$(rstream submit "$prefix")
    echo "submitted job $job (model $RSTREAM_MODEL)"
    rstream wait "$job"
    rstream status "$job"
    echo "first result lines:"
    rstream results "$job" | head -n 3
    echo "manifest: $(shown "$RSTREAM_STORAGE_ROOT/results/$job/manifest.json")"
    exit 0
fi

data="demo/digits-$stamp"
rstream samples "$data" --digits
start_worker "$RSTREAM_STORAGE_ROOT/demo-trainer.log" --train
start_worker "$RSTREAM_STORAGE_ROOT/demo-worker.log" --concurrency 2
echo "worker logs: $(shown "$RSTREAM_STORAGE_ROOT/demo-trainer.log"), demo-worker.log"
wait_ready "$RSTREAM_STORAGE_ROOT/demo-trainer.log" "${pids[0]}"

echo "fine-tuning digits from a random init on $data/train/ (rstream train --preset digits)"
outcome="$RSTREAM_STORAGE_ROOT/demo-train.json"
if ! rstream train --name digits --data "$data/train" --start random:resnet18:classes=10 \
        --preset digits --wait >"$outcome"; then
    cat "$outcome"; echo "the fine-tune failed; see $(shown "$RSTREAM_STORAGE_ROOT/demo-trainer.log")" >&2
    exit 1
fi
tail -n +2 "$outcome" | python scripts/demo_report.py training
rstream models ls digits

wait_ready "$RSTREAM_STORAGE_ROOT/demo-worker.log" "${pids[1]}"
job=$(rstream submit "$data/heldout/" --model digits)
echo "submitted job $job: the held-out digits, model digits (its production version)"
rstream wait "$job"
rstream results "$job" | python scripts/demo_report.py accuracy
echo "result lines: $(shown "$RSTREAM_STORAGE_ROOT/results/$job")/"
