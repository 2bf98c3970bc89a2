# The two commands of the README: `make demo` and `make test`.
# Both create or reuse .venv and install what they need from a fresh clone.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := dcmtk dicom3tools redis-server chromium openssl
TORCH_VERSION ?= 2.13.0

.PHONY: demo test lint venv system-packages bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel satisfies the [train] range, so pip fetches no CUDA build.
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $(STAMP)

venv: $(STAMP)

system-packages:
	@bash scripts/ensure_system_packages.sh $(APT_PACKAGES)

lint: venv
	$(VENV)/bin/ruff check service model_export tests bench

test: system-packages venv lint
	bash scripts/run_tests.sh

demo: system-packages venv
	$(VENV)/bin/lumbar-ai demo

bench: venv
	bash scripts/run_bench.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
