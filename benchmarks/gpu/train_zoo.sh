#!/usr/bin/env bash
# Train the zoo's six runs (paper recipe and our recipe, three networks each) in parallel on one GPU box.
# Data comes from `python benchmarks/gpu/pack_data.py --out .gpu` (the box cannot see ../shared); the
# albumentations wheels from .whl/. Results land in $OUT as tarballs (split to the box's 16 MB file limit).
#   PAPER_EPOCHS=50 OURS_EPOCHS=100 LIMIT_S=420 bash benchmarks/gpu/train_zoo.sh
set -u
PY=${PY:-python3}
OUT=${OUT:-out}
RUNS=${RUNS:-/tmp/runs}
PAPER_EPOCHS=${PAPER_EPOCHS:-50}
OURS_EPOCHS=${OURS_EPOCHS:-100}
LIMIT_S=${LIMIT_S:-420}
WORKERS=${WORKERS:-2}
mkdir -p "$OUT" "$RUNS"
. benchmarks/gpu/setup.sh  # albumentations from .whl/, edgeseg by links, EDGESEG_CACHE
ES="$PY -m edgeseg.cli"
W=.gpu/mnv2_features_fp16.pth
# build the caches once, before the parallel runs
$PY - <<'PYEOF' || exit 1
from edgeseg.cache import build_cache
from edgeseg.data import find_items
build_cache(find_items(".gpu/dsb256"), 256, tag="fixes=None", progress=False)
build_cache(find_items(".gpu/dsb256", ".gpu/dsb256_fixes"), 256, tag="fixes=.gpu/dsb256_fixes", progress=False)
build_cache(find_items(".gpu/monuseg06"), 256, tag="fixes=None", scale=1.0, progress=False)
print("caches ready")
PYEOF
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
common="--threads 1 --workers $WORKERS --device auto"
paper="--data .gpu/dsb256 --epochs $PAPER_EPOCHS --augment paper --recipe paper"
ours="--data .gpu/dsb256 --data .gpu/monuseg06@1.0 --mask-fixes .gpu/dsb256_fixes --epochs $OURS_EPOCHS --augment ours --schedule cosine --warmup-epochs 2 --instance --recipe ours"
run() {  # name, args...
  local name=$1; shift
  ( timeout "$LIMIT_S" $ES train "$@" $common --out "$RUNS/$name" > "$RUNS/$name.log" 2>&1; echo "$name exit $?" ) &
}
run paper_half_unet half_unet $paper
run paper_fast_scnn fast_scnn $paper
run paper_mobilenetv2_unet mobilenetv2_unet $paper --encoder-weights $W
run ours_half_unet half_unet $ours
run ours_fast_scnn fast_scnn $ours
run ours_mobilenetv2_unet mobilenetv2_unet $ours --encoder-weights $W
wait
for f in "$RUNS"/*.log; do echo "== $f"; grep -E "^epoch [0-9]+/[0-9]+ " "$f" | tail -2; tail -c 300 "$f" | tr '\r' '\n' | tail -2; done
cd "$RUNS" && tar czf "$OUT/small.tgz" --exclude='last.pt' --exclude='*mobilenetv2*/best.pt' ./*.log ./*/ \
  && tar cf - ./*mobilenetv2*/best.pt | split -b 15m - "$OUT/mnv2.tar.part-"
ls -la "$OUT"
