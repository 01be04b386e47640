# Set-up and everyday commands. `make train` and `make test` create the virtual environment first.
# GPU users: make train TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install train test test-fast lint clean

install: $(VENV)/.installed

# torch goes in first, pinned, so that lightning/torchmetrics do not pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

train: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

# The edit-test loop: unit tests only, no test marked slow (learning runs, scripts in subprocesses).
test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf outputs multirun .pytest_cache
