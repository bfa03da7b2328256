# Two commands: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SAE_TS_CACHE ?= $(HOME)/.cache/sae-ts

.PHONY: demo test lint typecheck pytest docs install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 resolves to the local CPU build here; pyproject's range accepts it, so nothing
# pulls CUDA wheels. The stamp re-installs when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sae-ts demo

lint: $(STAMP)
	$(BIN)/ruff check sae_ts tests benchmarks
	$(BIN)/ruff format --check sae_ts tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The docs site (mkdocs-material, API reference from the docstrings) into build/site/, offline.
# mkdocs.yml sets strict: a broken link, a missing page or a docstring warning fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint typecheck docs pytest

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
