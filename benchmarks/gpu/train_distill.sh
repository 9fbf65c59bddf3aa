#!/usr/bin/env bash
# Distil the zoo's MobileNetV2-UNet (our recipe, foreground + boundary outputs) into fast_scnn and half_unet,
# next to same-recipe baselines (alpha 0: the same command, data, augmentation and schedule without the
# teacher): four runs in parallel on one GPU box. Every student gets the instance head (--instance) and the
# stained-tissue mix (DSB2018 with the community mask fixes + MoNuSeg crops at 0.6).
# Data comes from `python benchmarks/gpu/pack_data.py --out .gpu` (the box cannot see ../shared), sent as
# `python benchmarks/gpu/webp_pack.py pack .gpu build/gpuw` (lossless, to fit the 64 MiB transfer; unpacked
# here), the albumentations wheels from .whl/, the teacher from edge/zoo/. Results: $OUT/distill.tgz (no last.pt).
# On the lent box: run(carry=["build/gpuw", ".whl"], command="bash benchmarks/gpu/train_distill.sh").
# A run cut by LIMIT_S stops after its current epoch and still writes best.pt + its card (see train/distill.py).
#   EPOCHS=100 LIMIT_S=410 bash benchmarks/gpu/train_distill.sh
# CPU smoke test of the whole script:
#   OUT=/tmp/o RUNS=/tmp/r EPOCHS=2 LIMIT=8 WORKERS=1 PY=.venv/bin/python bash benchmarks/gpu/train_distill.sh
set -u
PY=${PY:-python3}
OUT=${OUT:-out}
RUNS=${RUNS:-/tmp/runs}
EPOCHS=${EPOCHS:-100}
LIMIT_S=${LIMIT_S:-410}
WORKERS=${WORKERS:-3}
AUG=${AUG:-light}
ALPHA=${ALPHA:-1.0}
TEMP=${TEMP:-2.0}
LIMIT=${LIMIT:-}  # smoke tests: train on the first N images of each source
mkdir -p "$OUT" "$RUNS"
OUT=$(cd "$OUT" && pwd)
t0=$(date +%s)
. benchmarks/gpu/setup.sh  # albumentations from .whl/, edgeseg by links, EDGESEG_CACHE
if [ ! -d .gpu/dsb256 ] && [ -d build/gpuw ]; then  # the lossless WebP transport copy (see webp_pack.py)
  $PY benchmarks/gpu/webp_pack.py unpack build/gpuw .gpu || exit 1
fi
ES="$PY -m edgeseg.cli"
# build the caches once, before the parallel runs
$PY - <<'PYEOF' || exit 1
from edgeseg.cache import build_cache
from edgeseg.data import find_items
build_cache(find_items(".gpu/dsb256", ".gpu/dsb256_fixes"), 256, tag="fixes=.gpu/dsb256_fixes", progress=False)
build_cache(find_items(".gpu/monuseg06"), 256, tag="fixes=None", scale=1.0, progress=False)
print("caches ready")
PYEOF
echo "setup took $(( $(date +%s) - t0 )) s"
SMI=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$RUNS/gpu_util.csv" 2>&1 &
  SMI=$!
else
  echo "no nvidia-smi" > "$RUNS/gpu_util.csv"
fi
common="--threads 1 --workers $WORKERS --device auto"
recipe="--data .gpu/dsb256 --data .gpu/monuseg06@1.0 --mask-fixes .gpu/dsb256_fixes --epochs $EPOCHS"
recipe="$recipe --augment $AUG --schedule cosine --warmup-epochs 2 --instance ${LIMIT:+--limit $LIMIT}"
kd="--teacher mobilenetv2_unet --alpha $ALPHA --temperature $TEMP --recipe ours-$AUG-kd"
PIDS=()
run() {  # name, args...
  local name=$1; shift
  # --foreground: SIGTERM reaches the trainer only (it finishes its epoch and writes the card), not the
  # DataLoader workers of its process group, whose death would crash it mid-epoch
  ( timeout --foreground -k 30 "$LIMIT_S" $ES distill "$@" $common --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1
    echo "$name exit $? after $(( $(date +%s) - t0 )) s" ) &
  PIDS+=($!)
}
run distill_fast_scnn fast_scnn $recipe $kd
run distill_half_unet half_unet $recipe $kd
run distill_fast_scnn_alpha0 fast_scnn $recipe --alpha 0 --recipe ours-$AUG
run distill_half_unet_alpha0 half_unet $recipe --alpha 0 --recipe ours-$AUG
wait "${PIDS[@]}"
[ -n "$SMI" ] && kill "$SMI" 2>/dev/null
for f in "$RUNS"/*.log; do
  echo "== $f"; grep -E "^epoch [0-9]+/[0-9]+ " "$f" | tail -1; tail -c 400 "$f" | tr '\r' '\n' | tail -2
done
cd "$RUNS" && tar czf "$OUT/distill.tgz" --exclude='last.pt' ./*.log ./*.csv ./*/
ls -la "$OUT"
echo "total $(( $(date +%s) - t0 )) s"
