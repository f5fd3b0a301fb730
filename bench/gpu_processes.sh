#!/usr/bin/env bash
# Does scoring scale with processes on one GPU? (`rstream worker --per-gpu N` relies on it.)
# One `rstream score` process with many decode threads, then N processes at once, each on
# its own images with fewer threads; prints each process's rate and the aggregate.
#   bash bench/gpu_processes.sh [N] [IMAGES_PER_PROCESS]     (PYTHON=... to pick the python)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-4}"; count="${2:-2048}"
py="${PYTHON:-python3}"
export PYTHONPATH="$(bash scripts/checkout-path.sh):$PWD${PYTHONPATH:+:$PYTHONPATH}"  # rstream from this checkout
root=$(mktemp -d)
cores=$(nproc)
export RSTREAM_STORAGE_ROOT="$root" RSTREAM_DEVICE="${RSTREAM_DEVICE:-cuda}"
export RSTREAM_MAX_BATCH=256 RSTREAM_CHUNK_SIZE=256 RSTREAM_CONCURRENCY=4

for i in $(seq "$n"); do
    "$py" -m rstream.producer.cli samples "imgs$i" --count "$count" --size 500x375 --seed "$i" >/dev/null &
done
wait

score() {  # folder, decode threads, log
    RSTREAM_DECODE_THREADS="$2" "$py" -m rstream.producer.cli score "$root/$1" \
        --model random:resnet18 --out "$root/$1.jsonl" 2>"$3"
}
score imgs1 "$(( cores > 2 ? cores - 2 : 1 ))" "$root/single.log"
echo "one process:  $(grep 'rstream score:' "$root/single.log")"

per=$(( cores / n > 1 ? cores / n : 1 ))
start=$(date +%s.%N)
for i in $(seq "$n"); do score "imgs$i" "$per" "$root/multi$i.log" & done
wait
end=$(date +%s.%N)
for i in $(seq "$n"); do echo "process $i/$n: $(grep 'rstream score:' "$root/multi$i.log")"; done
"$py" -c "import sys; n, c, s, e = map(float, sys.argv[1:]); \
print(f'{int(n)} processes: {n*c:.0f} images in {e-s:.1f} s wall, start-up included: \
{n*c/(e-s):.0f} images/s')" "$n" "$count" "$start" "$end"
rm -rf "$root"
