#!/usr/bin/env bash
# GPU numbers in under 5 minutes on a CUDA machine with a preinstalled torch + torchvision.
#
#   bash bench/gpu.sh            # results in $OUT (if set) or bench/out-gpu/
#   bash bench/gpu.sh --dry-run  # no GPU needed: tiny CPU forward, prints what it would run
#
# 1. bench/gpu_forward.py: bare forward, fp32 and fp16 autocast, channels_last, batches
#    64/128/256, resnet18 and resnet50 (needs torch + torchvision only).
# 2. The pipeline, whichever the machine allows:
#    - rstream's deps importable and redis-server installed: bench/e2e.py on local storage
#      (bare vs rstream vs naive, real worker processes on the GPU);
#    - rstream's deps importable, no redis-server: bench/score_vs_bare.py --device cuda (the
#      in-process `rstream score` path: same engine, no Redis or Celery);
#    - otherwise: skipped, with the reason.
# Each step has its own time limit, so the whole script stays under 5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
# rstream importable from this checkout without installing it (scripts/checkout-path.sh).
export PYTHONPATH="$(bash scripts/checkout-path.sh):$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=${OUT:-bench/out-gpu}
mkdir -p "$OUT_DIR"
say() { echo "gpu.sh: $*" >&2; }

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    say "torch and torchvision are not importable with $PY: set PYTHON=/path/to/python"
    exit 1
fi
"$PY" - <<'EOF' >"$OUT_DIR/machine.json"
import json, os, platform, torch, torchvision
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                  "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                  "gpus": torch.cuda.device_count() if cuda else 0, "cpu_count": os.cpu_count(),
                  "python": platform.python_version()}))
EOF
cat "$OUT_DIR/machine.json" >&2

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    FORWARD_ARGS=(--device cpu --archs resnet18 --batches 2 --precisions fp32 --image-size 64
                  --seconds 0.2)
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        say "no CUDA device visible to torch; use --dry-run to check the script on a CPU"
        exit 1
    fi
    DEVICE=cuda
    FORWARD_ARGS=(--device cuda --archs resnet18,resnet50 --batches 64,128,256
                  --precisions fp32,fp16 --seconds 2)
fi

say "1/2 bare forward: ${FORWARD_ARGS[*]}"
timeout 120 "$PY" bench/gpu_forward.py "${FORWARD_ARGS[@]}" >"$OUT_DIR/forward.json" \
    || say "forward benchmark failed or timed out (status $?)"

CORES=$(nproc)
DECODE=$(( CORES > 2 ? CORES - 2 : 1 ))
if "$PY" -c "import celery, redis, boto3, safetensors, skimage, rstream.shared.settings, rstream.worker.serving.engine" \
        2>/dev/null && command -v redis-server >/dev/null; then
    E2E_ARGS=(--device "$DEVICE" --storage local --images 4096 --bare-images 2048
              --max-batch 256 --chunk-size 256 --concurrency 4 --decode-threads "$DECODE"
              --torch-threads 4 --repeats 3)
    [ "$DRY_RUN" = 1 ] && E2E_ARGS=(--device cpu --storage local --images 16 --bare-images 8
                                     --max-batch 8 --chunk-size 8 --repeats 1 --no-naive)
    say "2/2 pipeline: python -m bench.e2e ${E2E_ARGS[*]}"
    if [ "$DRY_RUN" = 1 ]; then
        say "(dry run: not started; it needs about a minute on a CPU)"
    else
        timeout 200 "$PY" -m bench.e2e "${E2E_ARGS[@]}" >"$OUT_DIR/e2e.json" \
            || say "e2e benchmark failed or timed out (status $?)"
    fi
elif "$PY" -c "import rstream.shared.settings, rstream.worker.serving.score, skimage, sklearn" 2>/dev/null; then
    SCORE_ARGS=(--device "$DEVICE" --images 2048 --batch 256 --decode-threads "$DECODE"
                --repeats 3)
    [ "$DRY_RUN" = 1 ] && SCORE_ARGS=(--device cpu --images 16 --batch 8 --repeats 1)
    say "2/2 pipeline (no redis-server or Celery here): bench/score_vs_bare.py ${SCORE_ARGS[*]}"
    timeout 200 "$PY" bench/score_vs_bare.py "${SCORE_ARGS[@]}" >"$OUT_DIR/score_vs_bare.json" \
        || say "score benchmark failed or timed out (status $?)"
else
    say "2/2 pipeline skipped: rstream's dependencies are not importable with $PY" \
        "(pip install -e '.[dev]' needs a package index)"
fi
say "results in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
