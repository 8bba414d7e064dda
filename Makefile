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

# pip's own lines (one per package it collects, a bar per download on a terminal) show the install's progress.
$(STAMP): pyproject.toml
	@echo "== installing the project into $(VENV) (first use only): PyTorch, Ray, Optuna and the rest, several GB;"
	@echo "== usually 2-5 minutes; pip shows each package below as it goes."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)
	@echo "== installed: $(VENV)"

demo: $(STAMP)
	$(BIN)/detector demo --out runs/demo

$(TOOLS)/.installed: Makefile
	@echo "== installing checkov into $(TOOLS) (for the Kubernetes manifest tests; first use only)"
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q '$(CHECKOV)'
	touch $@

# Two workers, a test module to each at a time (module fixtures are built once): much of an integration
# test is waiting on processes it started, which the other worker's tests fill. 2 = CI's cores; more
# workers would start more Ray clusters side by side than a small machine holds.
PYTEST := PATH=$(CURDIR)/$(TOOLS)/bin:$$PATH $(BIN)/python -m pytest -q -n 2 --dist loadfile

test: $(STAMP) $(TOOLS)/.installed
	$(PYTEST)

test-fast: $(STAMP) $(TOOLS)/.installed
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) $(TOOLS) runs .pytest_cache
