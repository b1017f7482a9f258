# `make demo` and `make test` are all a new user needs: both create .venv on first use.
PYTHON ?= python3
# pytest-xdist workers: the suite is mostly CLI subprocesses on one thread each; 2 suits a 2-core machine.
TEST_WORKERS ?= 2
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint docs bench clean

install: $(STAMP)

# torch/torchvision are pinned as a matched pair in pyproject.toml; never mix a
# different torch into this venv (torchvision would fail to import).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

demo: install
	$(BIN)/kdrun train-teacher
	$(BIN)/kdrun distill

test: install lint docs
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The package map (pyproject.toml's import-linter contracts): a wrong-way import fails here, naming it.
lint: install
	$(BIN)/lint-imports

# The docs site (docs/, mkdocs.yml), built strictly: a broken link or a page missing from the nav fails.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

# The README's 24-job sweep serial / joblib / stacked is part of it (about 6 minutes on 2 cores);
# `make bench BENCH_ARGS=` runs the per-epoch scenarios alone.
BENCH_ARGS ?= --sweep
bench: install
	$(BIN)/python -m kdrun.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs/*/ .pytest_cache site
