"""Count and nucleus area over time on the shipped clip, measured and tracked live: the README's plot.

    python benchmarks/track_plot.py      # writes docs/track_clip.png and docs/track_clip.csv

Runs `edgeseg run --track --csv` on the shipped time-lapse (the runtime's defaults: fast_scnn-int8) and plots,
per frame, the number of nuclei, their mean area and the number of live tracks, from the CSV alone (what a user
would do with pandas).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from edgeseg.device.live import run_session
    from edgeseg.device.options import RunOptions

    csv = DOCS / "track_clip.csv"
    with tempfile.TemporaryDirectory() as tmp:
        run_session(RunOptions(track=True, csv=str(csv), out=tmp, no_record=True, threads=1), progress=print)
    table = pd.read_csv(csv)
    per_frame = table.groupby("frame").agg(count=("label", "size"), mean_area=("area", "mean"),
                                           tracks=("track_id", "nunique"))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    top.plot(per_frame.index, per_frame["count"], label="nuclei")
    top.plot(per_frame.index, table.groupby("frame")["track_id"].max().cummax(), "--", label="tracks started")
    top.set_ylabel("nuclei")
    top.legend(loc="upper left")
    bottom.plot(per_frame.index, per_frame["mean_area"], color="tab:orange")
    bottom.set_ylabel("mean area (px)")
    bottom.set_xlabel("frame")
    fig.suptitle("The shipped clip through edgeseg run --track --csv (fast_scnn-int8)")
    fig.tight_layout()
    fig.savefig(DOCS / "track_clip.png", dpi=110)
    print(f"wrote {DOCS / 'track_clip.png'} and {csv}: {len(table)} rows, {table['track_id'].nunique()} tracks")


if __name__ == "__main__":
    main()
