# One command a job; each builds its own virtual environment.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean pi-wheels browser wheel wheel-check pi-smoke

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

# The wheels a user installs without a package index, built from this tree: dist/edgeseg-VERSION-py3-none-any.whl
# (the torch-free runtime) and dist/edgeseg_checkpoints-VERSION-py3-none-any.whl (the zoo's PyTorch checkpoints, data
# only, which the [train] and [export] extras require): pip install --find-links dist 'dist/edgeseg-*.whl[train]'
wheel: $(STAMP)
	$(BIN)/python packaging/wheels.py dist

# A fresh, non-editable install as a user makes it, in a new venv under /tmp (none of ours): the CPU build of torch,
# then the wheels of `make wheel` with [train,export]; it trains 1 epoch on the shipped sample, exports to ONNX and
# evaluates that file, then exports and evaluates a zoo checkpoint. Needs the package index (torch's CPU index and PyPI); not part of `make test`.
wheel-check: wheel
	bash packaging/wheel_check.sh

# A Raspberry Pi in the loop, emulated (not part of `make test`; as root, 20-40 min): Debian Bookworm arm64 built
# with debootstrap into .pi-smoke/ (kept), the wheel installed there, `edgeseg run` with every shipped model file on
# both backends as a Pi 4 (cortex-a72) and a Pi 5 (cortex-a76) under QEMU; writes benchmarks/results/pi_smoke.md.
# Needs: apt-get install debootstrap qemu-user-static
pi-smoke: wheel
	$(BIN)/python benchmarks/pi_smoke.py

clean:
	rm -rf $(VENV) build *.egg-info
