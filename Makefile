# The two commands of the README:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint format test-tl3 docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,lid]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tl-lape demo --out lape_report

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tl_lape tests scripts benchmarks
	$(VENV)/bin/ruff format --check tl_lape tests scripts benchmarks
	$(VENV)/bin/mypy tl_lape

format: $(STAMP)
	$(VENV)/bin/ruff format tl_lape tests scripts benchmarks
	$(VENV)/bin/ruff check --fix tl_lape tests scripts benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_collect.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
