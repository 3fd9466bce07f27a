# Two entry points for a fresh machine: `make demo` (install, then run the main job on the
# committed Criteo sample) and `make test` (install, then run the test suite).
# torch is installed first at a pinned CPU release, so the dependency resolver never pulls a
# multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test clean

$(BIN)/fedshaver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/fedshaver

install: $(BIN)/fedshaver

demo: install
	$(BIN)/python simulations/heterogeneous_devices.py

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) cache runs .pytest_cache
