# Set-up and everyday commands. `make train` and `make test` create the virtual environment first.
# GPU users: make train TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
VENV_MIN ?= .venv-min
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
MIN_BIN := $(VENV_MIN)/bin
ARGS ?=
# pytest-xdist: one worker per core, each with its share of the cores; the tests that read the one default run
# (and the doc commands, which wait for it) in one worker (tests/conftest.py).
PARALLEL ?= -n auto --dist loadgroup

.PHONY: install install-min train test test-fast test-min lint lint-min clean

install: $(VENV)/.installed

# torch goes in first, pinned, so that lightning/torchmetrics do not pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The lowest versions pyproject.toml allows: every floor pinned (.ci/min_versions.py), the rest as pip resolves it.
install-min: $(VENV_MIN)/.installed

$(VENV_MIN)/.installed: pyproject.toml .ci/min_versions.py
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(PYTHON) .ci/min_versions.py > $(VENV_MIN)/constraints.txt
	$(MIN_BIN)/python -m pip install --quiet -c $(VENV_MIN)/constraints.txt $(TORCH)
	$(MIN_BIN)/python -m pip install --quiet -c $(VENV_MIN)/constraints.txt -e ".[dev]"
	touch $@

train: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(BIN)/python -m pytest $(PARALLEL) $(ARGS)

# The edit-test loop: unit tests only, none marked slow (learning runs, scripts in subprocesses, Lightning's DDP spawn) or
# integration (a few epochs of train() in-process).
test-fast: install
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow and not integration" $(ARGS)

test-min: install-min
	$(MIN_BIN)/python -m pytest $(PARALLEL) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The lint rules at the floor ruff; formatting is the newest ruff's (`make lint`): two formatter versions can
# disagree on the same file, so only one of them can be the reference.
lint-min: install-min
	$(MIN_BIN)/ruff check .

clean:
	rm -rf outputs multirun .pytest_cache
