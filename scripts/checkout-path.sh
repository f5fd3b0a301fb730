#!/usr/bin/env bash
# Makes this checkout importable as `rstream` without installing it, for a machine where pip
# cannot install it (a lent GPU machine) and for mypy: .rstream-path/rstream/ links the three
# folders under their installed names. Prints the folder to put on PYTHONPATH:
#   export PYTHONPATH="$(bash scripts/checkout-path.sh)${PYTHONPATH:+:$PYTHONPATH}"
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .rstream-path/rstream
for wing in producer shared worker; do ln -sfn "../../$wing" ".rstream-path/rstream/$wing"; done
echo "$PWD/.rstream-path"
