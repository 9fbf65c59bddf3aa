# Sourced by the GPU training scripts: make edgeseg importable on the bare GPU box.
# albumentations from the carried wheels in .whl/ (the box has no index), and the package-dir mapping
# (edge/ -> edgeseg, train/ -> edgeseg.train, ...) by symbolic links when edgeseg is not installed.
if [ -d .whl ] && ! $PY -c "import albumentations" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import edgeseg.train" 2>/dev/null; then
  rm -rf /tmp/pkg && mkdir -p /tmp/pkg/edgeseg
  ln -s "$PWD"/edge/* /tmp/pkg/edgeseg/
  for d in train export device; do ln -s "$PWD/$d" /tmp/pkg/edgeseg/$d; done
  export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
fi
export EDGESEG_CACHE=${EDGESEG_CACHE:-/tmp/cache} PYTHONUNBUFFERED=1
