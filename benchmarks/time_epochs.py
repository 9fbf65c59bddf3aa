"""Measure one training epoch of each network on this machine's CPU, fp32 vs bf16 (autocast + channels-last).

    python benchmarks/time_epochs.py --data ../shared/data/dsb2018/stage1_train

Each network trains 2 epochs on the first 64 training images (batch 8, 2 threads); the second epoch's
training time is scaled to the full training split (534 images) per epoch and per 5 epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import DSB, RESULTS, cpu_name

from edgeseg.fsutil import atomic_write_json
from edgeseg.train.trainer import TrainConfig, Trainer

N_TRAIN = 534


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DSB))
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_epoch_times.json")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    rows = []
    for arch in ("half_unet", "mobilenetv2_unet", "fast_scnn"):
        for precision in ("fp32", "bf16"):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(model=arch, data=a.data, out=tmp + "/run", epochs=2, limit=64, threads=a.threads,
                                  precision=precision)
                Trainer(cfg, progress=False).fit()
                log = [json.loads(x) for x in Path(tmp, "run", "log.jsonl").read_text().splitlines()]
            per_image = log[-1]["train_seconds"] / 64
            rows.append({"model": arch, "precision": precision, "seconds_per_epoch": round(per_image * N_TRAIN, 1),
                         "seconds_per_5_epochs": round(per_image * N_TRAIN * 5, 1)})
            print(rows[-1], flush=True)
    atomic_write_json(a.out, {"machine": {"cpu": cpu_name(), "threads": a.threads}, "rows": rows,
                              "method": "2 epochs on 64 training images, batch 8; epoch 2 scaled to 534 images"})


if __name__ == "__main__":
    main()
