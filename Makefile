# Every target does its own set-up: a fresh machine needs nothing but Python 3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.netmorph-installed
# CPU build on these machines; see README for CUDA builds.
TORCH  ?= torch==2.13.0

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	bash examples/demo.sh

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

bench: install
	$(PY) benchmarks/reduce.py
	$(PY) benchmarks/solver.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache demo-out
