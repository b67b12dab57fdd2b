# Every target does its own set-up: a fresh machine needs nothing but Python 3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.netmorph-installed
# CPU build on these machines; see README for CUDA builds.
TORCH  ?= torch==2.13.0

.PHONY: install test test-all test-slow demo lint bench clean reproduce-quick reproduce-full grow-quick \
        readme-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,plot,onnx,images]'
	touch $(STAMP)

# one pytest worker per CPU (pytest-xdist): 2:49–4:20 on the 2-core machine, 6:18 in one
test: install
	$(PY) -m pytest -q -n auto

# everything, the slow tests too (e.g. every preset × depth × 10 seeds in float32)
test-all: install
	$(PY) -m pytest -q -m ""

# only the tests `make test` leaves out (CI runs test, then this)
test-slow: install
	$(PY) -m pytest -q -m slow

demo: install
	bash examples/demo.sh

# run every command the README shows and compare what it prints (tools/readme_check.py;
# --write regenerates the outputs). Blocks that need CIFAR-10 or the akamaster weights
# run when DATA_DIR / WEIGHTS_DIR hold them, else are reported as skipped.
WEIGHTS_DIR ?= ../shared/weights
readme-check: install
	$(PY) tools/readme_check.py $(if $(DATA_DIR),--data-dir "$(DATA_DIR)") \
	    --weights "$(WEIGHTS_DIR)"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy src

bench: install
	$(PY) benchmarks/reduce.py
	$(PY) benchmarks/solver.py
	$(PY) benchmarks/morph.py
	$(PY) benchmarks/presets.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/import_export.py

# The paper's Table 1 protocol; DATA_DIR must hold cifar10 (.npz, folder or archive).
DATA_DIR ?= $(NETMORPH_DATA)
reproduce-quick: install
	PATH=$(VENV)/bin:$$PATH $(PY) examples/reproduce/run.py --scale quick --data-dir "$(DATA_DIR)"

reproduce-full: install
	PATH=$(VENV)/bin:$$PATH $(PY) examples/reproduce/run.py --scale full --data-dir "$(DATA_DIR)" \
	    --out examples/reproduce/results-full

# Calibrated morphs of the real akamaster ResNet-20 vs the parent trained on (issue: does a
# grown network beat its parent?). WEIGHTS: resnet20-12fca82f.th; EPOCHS per run.
WEIGHTS ?= $(DATA_DIR)/../weights/akamaster_resnet20-12fca82f.th
EPOCHS ?= 5
grow-quick: install
	PATH=$(VENV)/bin:$$PATH $(PY) examples/grow/run.py --weights "$(WEIGHTS)" \
	    --data-dir "$(DATA_DIR)" --epochs $(EPOCHS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache demo-out
