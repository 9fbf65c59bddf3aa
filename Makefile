# One command a job; each builds its own virtual environment.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean pi-wheels

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgeseg run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Raspberry Pi OS Bookworm (Python 3.11, aarch64): the base install resolves from binary wheels only (needs the index)
pi-wheels: $(STAMP)
	PY=$(BIN)/python bash .ci/check_pi_wheels.sh aarch64 x86_64

clean:
	rm -rf $(VENV) build *.egg-info
