"""Choose, per shipped network, which network measures its nuclei for the scale policy, on the VALIDATION splits.

    python benchmarks/choose_sizer.py [--models fast_scnn,...] [--sizer mobilenetv2_unet] [--write]

A network measures nuclei well only near the size it learnt: a Fast-SCNN that merges small nuclei measures the
merged blobs, and the scale it then picks makes it count worse (``edgeseg.scale``). The alternative is one pass of
an accurate network per frame size (``Segmenter.load(..., sizer=NAME)``; the card's ``training_scale.measured_by``).
For each network, the file ``edgeseg run`` runs (``Zoo.variants(network, precision="int8")[0]``) is scored twice
on the validation splits, measuring itself and measured by ``--sizer`` (default ``mobilenetv2_unet``, the accurate
side of the paper's trade-off: trained on DSB2018 and MoNuSeg, the best DSB2018 and MoNuSeg scores in the zoo):

* the DSB2018 validation images resized x0.5 / x1 / x2 / x4 (``frontier.magnify``): mean count per image, one
  Segmenter per factor, each image planned on its own; the worst ratio to x1 (the target is within +-15 %);
* DSB2018 validation F1@0.5 and MoNuSeg validation count MAE at x1 (``edgeseg.evaluate``).

The sizer is kept where it brings the worst magnification ratio nearer to 1 while DSB F1@0.5 falls by at most
``TOL_F1`` and MoNuSeg count MAE rises by at most ``TOL_COUNT`` of the mean true count (``tune_postprocess``'s
tolerances). ``--write`` puts a choice that differs from the cards' into every zoo card of the network
(``training_scale.measured_by``, or removes it), scores each file on the DSB2018 test split again, and puts each
side card back inside its file (``tune_postprocess.rewrite_cards``).
Results: ``benchmarks/results/sizer.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import DSB, MONUSEG, RESULTS, cpu_name, machine_line, markdown_table, split_samples, write_results
from frontier import EVAL_THREADS, MAG_TOLERANCE, MAGNIFICATIONS, magnify, open_seg
from tune_postprocess import SHIPPED, TOL_COUNT, TOL_F1, rewrite_cards, say

SIZER = "mobilenetv2_unet"
CHOSEN_ON = ("DSB2018 validation images at x0.5 / x1 / x2 / x4 and MoNuSeg validation tiles "
             "(benchmarks/choose_sizer.py)")


def scored(path: Path, sizer: str | bool, dsb: list, monuseg: list) -> dict:
    """Magnification counts on ``dsb``, DSB F1@0.5 and MoNuSeg count MAE, with ``sizer`` measuring."""
    from edgeseg.evaluate import evaluate

    out: dict = {"counts": {}}
    for factor in MAGNIFICATIONS:
        with open_seg(path, sizer=sizer) as seg:
            if factor == 1.0:
                res = evaluate(seg, dsb)
                out["dsb_f1_50"] = float(res["summary"]["f1_50"])
                out["counts"]["1.0"] = float(np.mean([r["n_pred"] for r in res["images"]]))
                out["measured_by"] = seg.info.get("scale_measured_by", "itself")
            else:
                out["counts"][str(factor)] = float(np.mean([seg(magnify(s.image, factor)).count for s in dsb]))
        say(f"  {path.name} measured by {sizer or 'itself'}: x{factor:g} {out['counts'][str(factor)]:.1f}")
    base = out["counts"]["1.0"]
    out["ratios"] = {f: c / base if base else None for f, c in out["counts"].items()}
    out["worst"] = max(abs(r - 1.0) for r in out["ratios"].values() if r is not None)
    with open_seg(path, sizer=sizer) as seg:
        out["monuseg_count_mae"] = float(evaluate(seg, monuseg)["summary"]["count_mae"])
    return out


def choose(itself: dict, sized: dict, monuseg_true: float) -> bool:
    """Whether the sizer is kept: the worst magnification ratio nearer to 1, DSB F1 and MoNuSeg counts kept."""
    return (sized["worst"] < itself["worst"] and sized["dsb_f1_50"] >= itself["dsb_f1_50"] - TOL_F1
            and sized["monuseg_count_mae"] <= itself["monuseg_count_mae"] + TOL_COUNT * monuseg_true)


def markdown(results: dict, meta: dict) -> str:
    def arm(a: dict) -> list[str]:
        r = a["ratios"]
        ratios = " / ".join(f"{r[f]:.3f}{'*' if abs(r[f] - 1) > MAG_TOLERANCE else ''}" for f in ("0.5", "2.0", "4.0"))
        return [ratios, f"{a['dsb_f1_50']:.3f}", f"{a['monuseg_count_mae']:.1f}"]

    rows = []
    for net, r in results.items():
        for name, a in (("itself", r["itself"]), (r["sizer"], r["sized"])):
            rows.append([net, r["file"], name, *arm(a), "**kept**" if (name != "itself") == r["use_sizer"] else ""])
    header = ["network", "file", "nuclei measured by", "DSB val count x0.5 / x2 / x4 over x1", "DSB val F1@0.5",
              "MoNuSeg val count MAE", "chosen"]
    return "\n".join([
        "# Which network measures the nuclei: chosen on validation", "",
        f"Command: `{meta['command']}` ({meta['date']}, {meta['seconds'] / 60:.1f} min).", "",
        machine_line(meta["cpu"], EVAL_THREADS) + ". Nothing here is timed.", "",
        f"Data: DSB2018 val ({meta['n_dsb']} images; resized x0.5 / x1 / x2 / x4, one Segmenter per factor, each "
        f"image planned on its own), MoNuSeg val ({meta['n_monuseg']} tiles; mean {meta['monuseg_true']:.0f} nuclei "
        "a tile). The sizer is kept where it brings the worst magnification ratio nearer to 1 while DSB val "
        f"F1@0.5 falls by at most {TOL_F1} and MoNuSeg val count MAE rises by at most {TOL_COUNT:.0%} of the mean "
        "true count; * = outside +-15 %.", "",
        markdown_table(header, rows), ""])


def main() -> None:
    from edgeseg.zoo import Zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="networks to choose for (default: every shipped one but the sizer)")
    ap.add_argument("--sizer", default=SIZER, help=f"the network that measures (default: {SIZER})")
    ap.add_argument("--write", action="store_true", help="write the choice into the zoo cards")
    ap.add_argument("--out", type=Path, default=RESULTS / "sizer")
    args = ap.parse_args()
    t0 = time.time()
    zoo = Zoo()
    sizer = args.sizer
    nets = args.models.split(",") if args.models else [n for n in SHIPPED if n != sizer]
    dsb, monuseg = split_samples(DSB, "val"), split_samples(MONUSEG, "val")
    monuseg_true = float(np.mean([s.labels.max() for s in monuseg]))
    results, written = {}, {}
    for net in nets:
        ref = zoo.variants(net, precision="int8")[0]
        say(f"{net}: {ref.path.name}")
        itself, sized = (scored(ref.path, s, dsb, monuseg) for s in (False, sizer))
        use = choose(itself, sized, monuseg_true)
        results[net] = {"file": ref.path.name, "sizer": sizer, "itself": itself, "sized": sized, "use_sizer": use}
        say(f"{net}: worst ratio {itself['worst']:.3f} -> {sized['worst']:.3f}, DSB F1 {itself['dsb_f1_50']:.3f} -> "
            f"{sized['dsb_f1_50']:.3f}, MoNuSeg MAE {itself['monuseg_count_mae']:.1f} -> "
            f"{sized['monuseg_count_mae']:.1f}: {'measured by ' + sizer if use else 'measures itself'}")
        if args.write and ref.card.measured_by != (sizer if use else None):  # a card already right stays as it is
            written[net] = rewrite_cards(net, lambda card, use=use: set_measured_by(card, sizer if use else None))
    meta = {"command": " ".join(["python", "benchmarks/choose_sizer.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": time.time() - t0,
            "cpu": cpu_name(), "n_dsb": len(dsb), "n_monuseg": len(monuseg), "monuseg_true": monuseg_true,
            "written": written}
    write_results(args.out, {"meta": meta, "results": results}, markdown(results, meta))


def set_measured_by(card: dict, sizer: str | None) -> None:
    """Name ``sizer`` in a card's ``training_scale`` as the network that measures its nuclei (None: itself)."""
    scale = card.setdefault("training_scale", {})
    scale.pop("measured_by", None)
    scale.pop("measured_by_chosen_on", None)
    if sizer is not None:
        scale["measured_by"] = sizer
        scale["measured_by_chosen_on"] = CHOSEN_ON


if __name__ == "__main__":
    main()
