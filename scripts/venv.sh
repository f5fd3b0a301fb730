#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs rstream into it.
# The venv is keyed on pyproject.toml's dependency lists, so a dependency change builds a new
# one and an unchanged project reuses the last. Prints the venv's path on stdout.
# Usage: scripts/venv.sh [EXTRAS]      e.g. scripts/venv.sh dev   (VENV_DIR overrides the path)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
key=$("$python" - "$extras" <<'PY'
import hashlib, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = {"deps": project["dependencies"], "extras": project.get("optional-dependencies", {}),
        "want": sys.argv[1], "python": sys.version.split()[0]}
print(hashlib.sha256(repr(deps).encode()).hexdigest()[:16])
PY
)
venv="${VENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rstream/venv-$key}"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "setting up $venv (first time: about 3 minutes, torch is large)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -e "$spec" >&2
    touch "$venv/.complete"
else
    # The venv is reused; point the editable install at this checkout (its output only if it
    # fails: setuptools warns about every editable install).
    if ! out=$("$venv/bin/python" -m pip install -q --no-deps -e "$spec" 2>&1); then
        echo "$out" >&2; exit 1
    fi
fi
echo "$venv"
