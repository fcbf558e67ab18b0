# Quick start: `make demo` runs the service on a simulated Jules API; `make test` checks everything.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: setup demo cluster test lint typecheck unit bench clean

$(STAMP): pyproject.toml tests/node/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,fast]'
	@# The Node clients of the tests; without npm the service still runs (make demo).
	@if command -v npm >/dev/null; then cd tests/node && npm ci --silent --no-audit --no-fund; \
	else echo "npm not found: the Node client tests will be skipped (or fail under CI)"; fi
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/control-room demo

# Redis (started if none answers), the simulated Jules API and three nodes; Ctrl-C stops all.
cluster: setup
	$(PY) -m control_room.devcluster

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

# Two workers, each test file on one (module-scoped fixtures such as the browser stay whole):
# the suite mostly waits on sockets and subprocesses, so two processes on two cores take
# about two thirds of the time of one.
unit: setup
	$(VENV)/bin/pytest -n 2 --dist loadfile

test: lint typecheck unit

bench: setup
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
