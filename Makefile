# `make demo` and `make test` are all a new user needs: both create .venv on first use.
PYTHON ?= python3
# pytest-xdist workers: the suite is mostly CLI subprocesses on one thread each; 2 suits a 2-core machine.
TEST_WORKERS ?= 2
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slurm lint docs bench gpu-check clean

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

# The tests marked `slurm` on a real Slurm: tests/slurm/start.sh installs (apt) and starts one on this machine as
# 2 emulated nodes, the tests run, tests/slurm/stop.sh stops it. Where Slurm cannot start (not root) the tests
# are collected and skipped with that reason. 3 to 5 minutes on 2 cores, depending on their load.
test-slurm: install
	@start=$$(date +%s); tests/slurm/start.sh; up=$$?; \
	if [ $$up != 0 ] && [ $$up != 3 ]; then exit $$up; fi; \
	KDRUN_SLURM_TESTS=1 $(BIN)/python -m pytest -q -p no:xdist -m slurm --durations=10 tests/test_slurm.py; rc=$$?; \
	if [ $$up = 0 ]; then tests/slurm/stop.sh; fi; \
	echo "test-slurm: $$(( $$(date +%s) - start )) s (start, tests, stop)"; exit $$rc

# The package map (pyproject.toml's import-linter contracts): a wrong-way import fails here, naming it.
lint: install
	$(BIN)/lint-imports

# The docs site (docs/, mkdocs.yml), built strictly: a broken link or a page missing from the nav fails.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

# The README's 24-job sweep serial / joblib / stacked (about 6 minutes on 2 cores) and the trust rows (latency
# stability, threads under load, cold start, help: about 4 minutes) and eager vs ONNX Runtime fp32 vs INT8
# (--deploy, under a minute) are part of it; `make bench BENCH_ARGS=`
# runs the per-epoch scenarios alone.
BENCH_ARGS ?= --sweep --trust --deploy
bench: install
	$(BIN)/python -m kdrun.bench $(BENCH_ARGS)

# The CUDA path (bf16, channels_last, compile, cached/live teacher, pinned loaders, DDP with 2 GPUs): under 8 minutes
# on one GPU; tests/test_bench.py runs it at toy sizes on the CPU (`--smoke`) so it cannot rot.
gpu-check: install
	$(BIN)/python -m kdrun.bench.gpu_check

clean:
	rm -rf $(VENV) outputs/*/ .pytest_cache site
