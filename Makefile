# One command a job; each builds its own virtual environment.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean pi-wheels browser

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

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# the browser test of `run --serve` drives Debian's headless chromium; without root/apt it is skipped
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { timeout 600 apt-get install -y -qq chromium >/dev/null 2>&1 \
	       || { timeout 300 apt-get update -qq >/dev/null 2>&1 && timeout 600 apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
	  || echo "chromium not installed: the browser test will be skipped"; }

lint: $(STAMP)
	$(BIN)/ruff check .

# Raspberry Pi OS Bookworm (Python 3.11, aarch64): the base install resolves from binary wheels only (needs the index)
pi-wheels: $(STAMP)
	PY=$(BIN)/python bash .ci/check_pi_wheels.sh aarch64 x86_64

clean:
	rm -rf $(VENV) build *.egg-info
