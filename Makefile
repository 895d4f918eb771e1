# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test browser lint bench clean

run: install
	$(BIN)/telemed db upgrade
	$(BIN)/telemed serve --demo

test: lint browser
	$(BIN)/pytest

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

install: $(VENV)/.installed node_modules/.installed

install-test: install $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

browser:
	@scripts/ensure-chromium

bench: install-test browser
	$(BIN)/python bench/signaling_relay.py
	$(BIN)/python bench/idle_memory.py
	$(BIN)/python bench/join_time.py
	$(BIN)/python bench/recorder_cpu.py
	$(BIN)/python bench/recorder_streams.py
	$(BIN)/python bench/recorder_finalize.py
	$(BIN)/python bench/card_bridge.py
	$(BIN)/python bench/card_everything.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
