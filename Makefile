# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates or refreshes .venv from pyproject.toml; nothing but Python 3.11+ is needed first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-fleet test lint format bench soak screenshots clean install

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# A production install: the package and its runtime dependencies only (no pytest, hypothesis
# or ruff), in $(PREFIX)/.venv where the systemd unit looks for it, with the route table and
# config beside it (an existing $(PREFIX)/config is left as it is).
PREFIX ?= /opt/cutover-shim

install:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(PREFIX)/.venv
	rm -rf build  # setuptools never prunes build/lib: a module since removed would ship
	$(PREFIX)/.venv/bin/pip install --quiet --disable-pip-version-check --upgrade .
	[ -e $(PREFIX)/config ] || cp -r config $(PREFIX)/config

demo: $(BIN)/.installed
	$(BIN)/shim demo

# etcd plus two shim instances sharing their flags (needs Debian's etcd-server)
demo-fleet: $(BIN)/.installed
	$(BIN)/python -m shim.cli.fleet_demo

test: $(BIN)/.installed lint
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The benchmark lives in benchmarks/ (not in the wheel): `shim bench` loads it from this
# checkout. ARGS are shim bench's options, e.g. make bench ARGS="--scenarios small --duration 5"
bench: $(BIN)/.installed
	$(BIN)/shim bench $(ARGS)

soak: $(BIN)/.installed
	$(BIN)/python -m benchmarks.soak --requests 200000

# The operator page in three states, for the README (needs /usr/bin/chromium).
screenshots: $(BIN)/.installed
	$(BIN)/python docs/screenshots.py

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) state .pytest_cache .ruff_cache .hypothesis
