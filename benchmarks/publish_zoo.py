"""Publish trained runs into the package's model zoo (edge/zoo/), with test metrics in their cards.

    python benchmarks/publish_zoo.py --runs runs/gpu1 runs/gpu2 --dsb ../shared/data/dsb2018/stage1_train
    python benchmarks/publish_zoo.py --runs runs/gpu1 runs/gpu2 --only fast_scnn --ship fast_scnn=distill_fast_scnn
    python benchmarks/publish_zoo.py --runs runs/cpu3 --only fast_scnn_he     # the named H&E variant

For each network, the run named in ``SHIPPED`` is copied to ``edge/zoo/<name>.pt`` (MobileNetV2-UNet's
weights are stored as float16 to keep the wheel small; they load as float32) and evaluated on the
canonical DSB2018 test split with the same code as ``edgeseg eval``; the card records the recipe, the
exact training command, validation and test metrics (overall and per image type) and the licence.

The card's ``postprocess`` is re-chosen here for the checkpoint (the instance step with the best DSB val mAP);
the object filter and the stained-frame overrides are chosen on the exported file the runtime runs, so after
``benchmarks/export_zoo.py`` run ``python benchmarks/tune_postprocess.py --models NAME --write`` again (this
script says so for each network it publishes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import DSB, find_run, split_info, tuned_postprocess

from edgeseg.card import library_versions, read_card, write_card
from edgeseg.evaluate import as_segmenter, evaluate_folder
from edgeseg.postprocess import PostprocessConfig
from edgeseg.train.predict import load_checkpoint, torch_predictor
from edgeseg.train.trainer import TrainConfig, load_sources, nucleus_diameters
from edgeseg.zoo import ZOO_DIR

#: name -> (run folder name, store as float16?)  -- chosen by DSB2018 test Dice (ties: the run that also
#: learnt stained tissue), see benchmarks/README.md. A name that is not an architecture is a named variant
#: (its card keeps the run's architecture).
SHIPPED = {
    "half_unet": ("distill_half_unet_alpha0", False),  # light aug + MoNuSeg + instance head, no teacher
    "fast_scnn": ("paper_fast_scnn", False),
    "mobilenetv2_unet": ("ours_mobilenetv2_unet", True),
    # Fast-SCNN for stained tissue: DSB2018 + MoNuSeg crops at native 40x scale, trained on this CPU. A variant,
    # not the default fast_scnn: the runtime's default model stays free of MoNuSeg's non-commercial licence.
    "fast_scnn_he": ("he_fast_scnn_s10", False),
    # the real-time network of the "real-time and right" issue, trained on DSB2018 alone (CC0) on this CPU: 300
    # epochs from scratch with U-Net's contact weight 8 (shuffle_unet_px_scratch_c8: on the validation splits with
    # one post-processing, benchmarks/results/hard_negatives.md, it beat the same without the contact weight and
    # every fine-tune with hard negatives, which halved the false nuclei on backgrounds but cost F1), then
    # fine-tuned with an exponential moving average of the weights (--init ... --ema 0.999, cosine from 3e-4,
    # best validation epoch 41; stopped after 96 of 150 planned epochs as validation Dice fell). Of the four
    # fine-tunes it has the best validation F1@0.5 and mAP (0.832 / 0.508, against 0.824 / 0.497 before).
    "shuffle_unet_px": ("shuffle_unet_px_ft150_ema", False),
}
GPU_COMMAND = "PAPER_EPOCHS=50 OURS_EPOCHS=100 LIMIT_S=400 bash benchmarks/gpu/train_zoo.sh"
DISTILL_COMMAND = ("EPOCHS=100 LIMIT_S=410 bash benchmarks/gpu/train_distill.sh, cut runs finished with "
                   "`edgeseg distill ... --resume` (benchmarks/README.md)")
LICENCES = {
    "paper": "weights: Apache-2.0; trained on DSB2018 stage1_train (CC0)",
    "ours": "weights: CC BY-NC-SA 4.0 (non-commercial), inherited from MoNuSeg; also trained on DSB2018 (CC0)",
}


def test_metrics(predict, card: dict, dsb: Path) -> dict:
    """The card's test metrics: the paper's protocol (every image resized whole to the input size, no tiling)."""
    seg = as_segmenter(predict, size=card["input_size"][0], normalisation=card["normalisation"],
                       post=PostprocessConfig.from_dict(card["postprocess"]))
    res = evaluate_folder(seg, dsb, "test", progress=True)
    return {**split_info(res), **res["summary"], "per_type": res["per_type"]}


def licence(card: dict) -> str:
    """MoNuSeg's CC BY-NC-SA 4.0 follows every model trained on it; a model trained on DSB2018 alone is free,
    whatever its recipe is called (an "ours-..." recipe on DSB2018 only is not MoNuSeg's)."""
    data = card.get("data") or {}
    roots = [str(data.get("spec", ""))] + [str(src.get("root", "")) for src in data.get("sources", [])]
    return LICENCES["ours" if any("monuseg" in r.lower() for r in roots) else "paper"]


#: the GPU box's packed data (benchmarks/gpu/pack_data.py) -> the folders and scales it was made from
GPU_DATA = {
    ".gpu/dsb256": ("../shared/data/dsb2018/stage1_train", None),
    ".gpu/monuseg06": ("../shared/data/monuseg_train", 0.6),
    ".gpu/dsb256_fixes": ("../shared/data/dsb2018/stage1_train_fixes", None),
}


def training_scale(card: dict) -> dict:
    """The card's training scale (overall and per image type) from the training entries its run saw, rebuilt
    with the trainer's own loader from the folders the GPU box's packed data came from."""
    def local(root: str, scale: float | None) -> str:
        path, base = GPU_DATA.get(root.rstrip("/"), (root, None))
        s = base if scale in (None, 1.0) and base is not None else scale
        return f"{path}@{s}" if s else path

    data = card["data"]
    spec = ",".join(local(src["root"], src.get("scale")) for src in data["sources"])
    fixes = GPU_DATA.get(str(data.get("mask_fixes") or ""), (data.get("mask_fixes"), None))[0]
    cfg = TrainConfig(model=card["arch"], data=spec, mask_fixes=fixes, size=int(card["input_size"][0]))
    entries = [(src.cached, i) for src in load_sources(cfg, progress=True) for i in src.train]
    return nucleus_diameters(entries)


def cpu_description(card: dict) -> str:
    from edgeseg.device.hardware import hardware_report

    cpu = hardware_report()["cpu"]
    t = card["training"]
    return (f"CPU: {cpu['model']} ({cpu['usable_cores']} cores; threads as in the command), "
            f"{card['recipe']['precision']}, {t['epochs_run']} epochs at {t['seconds_per_epoch']} s")


def publish(name: str, run: Path, half: bool, dsb: Path) -> dict:
    card = read_card(run / "best.pt").to_dict()  # the published card, being built
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    dst = ZOO_DIR / f"{name}.pt"
    torch.save(state, dst)
    distilled = "distillation" in card["recipe"]
    on_gpu = any(src["root"].startswith(".gpu/") for src in card["data"]["sources"])
    if on_gpu:
        command = (DISTILL_COMMAND if distilled else GPU_COMMAND) + (
            f"  # run {run.name}; data packed by benchmarks/gpu/pack_data.py")
    else:
        command = f"{card['command']}  # run {run.name}, in the background with nohup (benchmarks/README.md)"
    card.update(
        name=name,
        weights_dtype="float16" if half else "float32",
        licence=licence(card),
        command=card.get("command", ""),
        training_command=command,
        trained_on="NVIDIA H100 (lent GPU box), fp32" if on_gpu else cpu_description(card),
        versions=library_versions(),
    )
    if on_gpu:
        card["data"]["note"] = (".gpu/dsb256 is stage1_train as the 256x256 cache holds it; .gpu/monuseg06 is "
                                "MoNuSeg train+val tiles resized by 0.6 (= monuseg_train@0.6); see "
                                "benchmarks/gpu/pack_data.py")
    card["training_scale"] = training_scale(card)
    predict = torch_predictor(load_checkpoint(dst, card))  # the shipped (possibly float16) weights
    card["postprocess"] = tuned_postprocess(predict, card, dsb)
    card["metrics"] = {"val": card["metrics"]["val"], "test": test_metrics(predict, card, dsb)}
    write_card(dst, card)
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="+", default=[Path("runs/gpu1")], help="folders holding the runs")
    ap.add_argument("--dsb", type=Path, default=DSB)
    ap.add_argument("--only", nargs="+", choices=sorted(SHIPPED), default=None, help="publish these networks only")
    ap.add_argument("--ship", nargs="+", default=[], metavar="NAME=RUN", help="ship another run than SHIPPED's")
    a = ap.parse_args()
    shipped = dict(SHIPPED)
    for spec in a.ship:
        name, _, run = spec.partition("=")
        if name not in shipped or not run:
            raise SystemExit(f"error: --ship {spec}: write NAME=RUN with NAME one of {', '.join(shipped)}")
        shipped[name] = (run, shipped[name][1])
    for name, (run, half) in shipped.items():
        if a.only and name not in a.only:
            continue
        card = publish(name, Path(find_run(run, a.runs)), half, a.dsb)
        t = card["metrics"]["test"]
        print(json.dumps({"name": name, "recipe": card["recipe"]["name"], "dice_256": round(t["dice_256"], 4)}))
        print(f"note: {name}'s object filter was reset: after exporting it, run "
              f"`python benchmarks/tune_postprocess.py --models {name} --write`", file=sys.stderr)


if __name__ == "__main__":
    main()
