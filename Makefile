# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv when it is absent and install lensworks into it (editable, with dev extras).
# TL picks the TransformerLens line: 3 (default, HookedTransformer) or 4 (TransformerBridge), each in
# its own venv: `make test TL=4`, `make demo TL=4`.
PYTHON ?= python3
TL ?= 3
ifeq ($(TL),4)
VENV ?= .venv-tl4
TL_REQ := transformer-lens>=4,<5
else
VENV ?= .venv
TL_REQ := transformer-lens>=3,<4
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lensworks-installed

.PHONY: demo test venv bench docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]" "$(TL_REQ)"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lensworks heads --json out/heads.json --html out/heads.html
	$(VENV)/bin/lensworks heads bpe-llama --top 4    # a Hugging Face Llama directory, read by load_model
	$(VENV)/bin/lensworks report -o out/report.html
	@echo "demo report: $(CURDIR)/out/report.html (open it in a browser; it works offline)"

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile tests    # one worker per core (pytest-xdist), a file per worker
	$(PY) -m pytest -q --doctest-modules lensworks    # every docstring example (namespace: conftest.py)

bench: $(STAMP)
	$(PY) benchmarks/bench_circuits.py
	$(PY) benchmarks/bench_geometry.py
	$(PY) benchmarks/bench_probes.py

docs: $(STAMP)
	$(PY) -m mkdocs build --strict -d site    # docs/ and the API reference from the docstrings; open site/index.html

clean:
	rm -rf .venv .venv-tl4 out site .pytest_cache
