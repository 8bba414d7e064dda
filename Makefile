# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the project on first use (pip, from PyPI).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov (tests/test_k8s.py runs it on the rendered manifests) in a venv of its own: its pins
# (networkx<2.7, packaging<24, botocore 1.35) would downgrade the project's own environment.
TOOLS := .venv-tools
CHECKOV := checkov==3.3.30

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/detector demo --out runs/demo

$(TOOLS)/.installed: Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q '$(CHECKOV)'
	touch $@

test: $(STAMP) $(TOOLS)/.installed
	PATH=$(CURDIR)/$(TOOLS)/bin:$$PATH $(BIN)/python -m pytest -q

test-fast: $(STAMP) $(TOOLS)/.installed
	PATH=$(CURDIR)/$(TOOLS)/bin:$$PATH $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(TOOLS) runs .pytest_cache
