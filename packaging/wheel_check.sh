#!/usr/bin/env bash
# `make wheel-check`: a fresh, non-editable install as a user makes it, in a new venv under /tmp (none of ours):
#   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu      (the CPU build, as the README says)
#   pip install --find-links dist 'dist/edgeseg-VERSION-py3-none-any.whl[train,export]'
# then, from a folder outside the checkout: train 1 epoch on the sample the package ships, export the run to ONNX,
# evaluate that file, and export / evaluate a zoo checkpoint (found in the edgeseg-checkpoints wheel, offline).
#   PY=python3.11 TORCH_INDEX=URL KEEP=1 bash packaging/wheel_check.sh    (TORCH_INDEX= : torch from pip's own index)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}  # TORCH_INDEX= : pip's own configuration
wheel=$(ls -t dist/edgeseg-*-py3-none-any.whl | head -1)
ls dist/edgeseg_checkpoints-*.whl >/dev/null || { echo "wheel-check: run 'make wheel' first" >&2; exit 2; }
work=$(mktemp -d /tmp/edgeseg-wheel-check.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
dist=$(cd dist && pwd)
step() { echo; echo "wheel-check: $*"; }

step "fresh venv $work/venv ($($PY --version))"
$PY -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/pip" install -q --upgrade pip
step "pip install torch==2.13.0 ${TORCH_INDEX:+--index-url $TORCH_INDEX}"
"$bin/pip" install -q torch==2.13.0 ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
step "pip install --find-links dist '$wheel[train,export]'"
"$bin/pip" install -q --find-links "$dist" "$dist/$(basename "$wheel")[train,export]"
"$bin/pip" list 2>/dev/null | grep -E -i "^(edgeseg|edgeseg-checkpoints|torch) "

cd "$work"  # nothing of the checkout on the path from here
sample=$("$bin/python" -c "from edgeseg.zoo import SAMPLE_DIR; print(SAMPLE_DIR)")
case "$sample" in "$work"/venv/*) ;; *) echo "wheel-check: edgeseg comes from $sample, not the venv" >&2; exit 1;; esac
step "edgeseg models (the checkpoints come from the edgeseg-checkpoints wheel)"
"$bin/edgeseg" models | tee models.txt
grep -q "edgeseg_checkpoints/fast_scnn.pt" models.txt || "$bin/python" - <<'PY'
from edgeseg.zoo import Zoo
ref = Zoo().checkpoint("fast_scnn")
assert ref is not None and "edgeseg_checkpoints" in str(ref.path), ref
print("wheel-check: zoo checkpoint fast_scnn at", ref.path)
PY
step "edgeseg train fast_scnn on the shipped sample, 1 epoch"
"$bin/edgeseg" train fast_scnn --data "$sample" --epochs 1 --batch-size 4 --threads 2 --out run
# FP32: the sample is 8 images of DSB2018's canonical test split, which INT8 calibration refuses (no training part)
step "edgeseg export run (ONNX FP32, checked against PyTorch)"
"$bin/edgeseg" export run --format onnx --out exported
onnx=$(ls exported/*.onnx | head -1)
step "edgeseg eval $onnx on the sample"
"$bin/edgeseg" eval "$onnx" --data "$sample" --json > eval_run.json
"$bin/python" -c "import json; d = json.load(open('eval_run.json')); print('wheel-check: trained+exported:', {k: v for k, v in d.get('summary', d).items() if 'dice' in k})"
step "edgeseg export half_unet (the zoo checkpoint) to FP32 ONNX and evaluate it"
"$bin/edgeseg" export half_unet --format onnx --out zoo_export
"$bin/edgeseg" eval zoo_export/half_unet-fp32.onnx --data "$sample" --json > eval_zoo.json
"$bin/python" -c "import json; d = json.load(open('eval_zoo.json')); print('wheel-check: half_unet-fp32:', {k: v for k, v in d.get('summary', d).items() if 'dice' in k})"
echo
echo "wheel-check: ok (fresh venv, non-editable install of $(basename "$wheel")[train,export]: trained, exported, evaluated)"
