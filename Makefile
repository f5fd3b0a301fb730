# One command for each check; `make check` runs them all.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: check lint types test venv

check: lint types test

venv:
	test -x $(PY) || (python3 -m venv $(VENV) && $(PY) -m pip install -q -e '.[dev]')

lint:
	$(PY) -m ruff check shared producer worker tests bench

# mypy reads packages from folders (it does not follow the editable install's import hook):
# scripts/checkout-path.sh links the three under their installed names in .rstream-path/.
types:
	bash scripts/checkout-path.sh >/dev/null
	$(PY) -m mypy

test:
	$(PY) -m pytest -q
