#!/usr/bin/env bash
# Raspberry Pi install path: does the base (torch-free) install of edgeseg resolve for Raspberry Pi OS
# Bookworm 64-bit (Python 3.11, aarch64, glibc 2.36) from binary wheels only - nothing compiled on the Pi?
#
#   make pi-wheels                                   # or: bash .ci/check_pi_wheels.sh [ARCH[:GLIBC] ...]
#   bash .ci/check_pi_wheels.sh aarch64 x86_64 armv7l
#
# It builds the edgeseg wheel from this tree (a copy: the tree gets no build/ folder), then asks pip to
# resolve that wheel and all its runtime dependencies for each ARCH (glibc 2.36 = Debian 12 / Raspberry Pi OS
# Bookworm unless given) with --only-binary=:all: and --dry-run (nothing is installed). pip does not widen
# a given --platform to older manylinux tags, so every manylinux_2_17 ... 2_GLIBC tag is passed. It needs the package index (the network), so it is not part of
# `make test`; run it in CI where the index is reachable. Exit 0 = every platform resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.11}
[ $# -gt 0 ] || set -- aarch64
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/src"
cp pyproject.toml README.md "$work/src/"
for d in edge train export device; do
  cp -r "$d" "$work/src/"
done
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
if ! "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src" >"$work/build.log" 2>&1; then
  cat "$work/build.log"
  exit 1
fi
wheel=$(ls "$work"/dist/edgeseg-*.whl)
echo "edgeseg wheel: $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"

status=0
for spec in "$@"; do
  arch=${spec%%:*}
  glibc=2.36
  [ "$spec" = "$arch" ] || glibc=${spec#*:}
  platforms=()
  for minor in $(seq 17 "${glibc#2.}"); do
    platforms+=(--platform "manylinux_2_${minor}_$arch")
  done
  platforms+=(--platform "manylinux2014_$arch" --platform "linux_$arch")
  platform="$arch-glibc$glibc"
  echo "== Python $PYVER on linux $arch (glibc $glibc), binary wheels only"
  if "$PY" -m pip install -q --dry-run --ignore-installed --only-binary=:all: \
      "${platforms[@]}" --python-version "$PYVER" --implementation cp \
      --target "$work/target" --report "$work/report-$platform.json" "$wheel"; then
    "$PY" - "$work/report-$platform.json" <<'PYEOF'
import json, sys
from pathlib import PurePosixPath
from urllib.parse import urlparse

report = json.load(open(sys.argv[1]))
for item in report["install"]:
    meta = item["metadata"]
    url = item.get("download_info", {}).get("url", "")
    name = PurePosixPath(urlparse(url).path).name or "(local)"
    print(f"  {meta['name']:<26}{meta['version']:<14}{name}")
    if not name.endswith(".whl"):
        sys.exit(f"  {meta['name']} is not a wheel: it would be compiled on the device")
print(f"  OK: {len(report['install'])} packages, all binary wheels")
PYEOF
  else
    echo "  FAILED: the base install does not resolve from binary wheels for $arch (glibc $glibc)"
    status=1
  fi
done
exit $status
