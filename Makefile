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

# installs nothing outside .venv: without a chromium the browser test is skipped ("run `make browser`")
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The one system-wide step, on request: Debian's chromium (apt-get, as root or through sudo) for the headless-browser
# test of `edgeseg run --serve`. Says what it runs; does nothing when a chromium is already there.
CHROMIUMS := chromium chromium-browser google-chrome
browser:
	@for c in $(CHROMIUMS); do p=$$(command -v $$c) && { echo "browser: $$p is already installed, nothing to do"; exit 0; }; done; \
	command -v apt-get >/dev/null 2>&1 || { echo "browser: no apt-get here: install chromium with your system's package manager" >&2; exit 1; }; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo "; \
	else echo "browser: installing chromium needs root: run 'apt-get install chromium' as root" >&2; exit 1; fi; \
	echo "browser: installing Debian's chromium system-wide (for the browser test of 'edgeseg run --serve'):"; \
	echo "  $${sudo}apt-get update && $${sudo}apt-get install -y chromium"; \
	$${sudo}apt-get update && $${sudo}apt-get install -y chromium

lint: $(STAMP)
	$(BIN)/ruff check .

# Raspberry Pi OS Bookworm (Python 3.11, aarch64): the base install resolves from binary wheels only (needs the index)
pi-wheels: $(STAMP)
	PY=$(BIN)/python bash .ci/check_pi_wheels.sh aarch64 x86_64

clean:
	rm -rf $(VENV) build *.egg-info
