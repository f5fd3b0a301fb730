# One command for each check; `make check` runs them all.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: check lint types test venv

check: lint types test

venv:
	test -x $(PY) || (python3 -m venv $(VENV) && $(PY) -m pip install -q -e '.[dev]')

lint:
	$(PY) -m ruff check shared producer worker tests bench

types:
	$(PY) -m mypy

test:
	$(PY) -m pytest -q
