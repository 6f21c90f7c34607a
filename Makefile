# The two commands of the README: `make demo` runs the main job end to end on built-in data,
# `make test` runs every test. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# A matched torch/torchvision pair: spikingjelly needs torchvision, and other pairs fail to import.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tmkt demo --out reports/demo

test: $(STAMP)
	TMKT_REAL_DATA=$${TMKT_REAL_DATA:-../shared/data} $(BIN)/python -m pytest -q -ra

# The documentation site (docs/ + mkdocstrings API reference) into site/; every warning is an error.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) reports runs site .pytest_cache
