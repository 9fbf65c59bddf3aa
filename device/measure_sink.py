"""Per-nucleus measurements and tracks of a live run, written in the formats biologists already use (torch-free).

    sink = MeasureSink(track=True, csv="nuclei.csv", ctc_out="ctc", labels_out="labels.ome.tif", um_per_px=0.65)
    for frame in source:                      # edgeseg.device.sources.Frame
        result = segmenter(frame.image, frame.order)
        record.update(sink.process(frame, result))   # {"tracks": 12, "divisions": [[3, 17, 18]], ...}
        result.track_ids                       # {label: track id}, for the overlay
    summary.update(sink.close())               # finalises every file

Each frame is measured once (:func:`edgeseg.measure.measure`, on the ORIGINAL frame: 8/16-bit, mono or
multi-channel, colour in RGB order) and linked to the tracks before it (:class:`edgeseg.track.Tracker`). Where
the tracker cuts an object that the segmentation merged from established tracks (touching nuclei), ``process``
replaces ``result.labels`` and ``result.count`` with the cut ones (and says ``"split": N`` in the record): call
it before the overlay is drawn, so that what is shown, counted and written agree.

Outputs (each optional):

- ``csv``: one row a nucleus a frame: ``frame`` (the source's frame index), ``timestamp`` (Unix seconds of
  capture), ``track_id`` and ``parent_id`` (0: none; with tracking), then the columns of
  :data:`edgeseg.measure.FIELDS` and the per-channel intensities. Plain CSV, read by pandas, R, Excel, Fiji.
- ``ctc_out``: a folder in the Cell Tracking Challenge result format: ``maskNNN.tif`` (uint16, one a processed
  frame, numbered from 000 in processing order, each nucleus painted with its CTC track label) and
  ``res_track.txt`` (``L B E P`` a line: label, first and last frame, parent label). A track missed for some
  frames and found again continues as a new CTC label whose parent is the label before the gap, and the two
  daughters of a division have the parent's label as ``P``, as the format prescribes. Needs tracking.
- ``labels_out``: an OME-TIFF label stack (T, Y, X), uint32: each nucleus painted with its track id (its label
  without tracking), with the physical pixel size (``PhysicalSizeX``/``Y`` in µm) when ``um_per_px`` is given;
  Fiji (Bio-Formats) and napari read it as a time series.

Nothing is left half-written: every part is written under a temporary name beside its target (the CSV and the
OME-TIFF as ``.NAME.XXXX``, the CTC folder as ``.NAME.XXXX/``; the OME-TIFF's frames are spooled to a
temporary raw file and the TIFF is written when the part closes) and renamed onto its name when it is complete.

Bounded on endless runs, like a recording: each output is cut into parts, and each part is finalised as soon as
it is full, so an interrupted run keeps every full part. Part 1 has the given name, part N >= 2 the name with
``-NNN`` before the suffix (``nuclei-002.csv``, ``ctc-002/``, ``labels-002.ome.tif``). A part holds at most
:data:`PART_ROWS` CSV rows (about 250 MB), :data:`PART_FRAMES` frames (CTC, OME-TIFF: mask000..mask999), at
most 65,535 CTC track labels (uint16) and :data:`PART_BYTES` bytes of raw OME-TIFF labels. An output stops
(its last part finalised, the run goes on, the frame record says so once) after :data:`MAX_PARTS` parts or
when the disk holding it has less than :data:`MIN_FREE_BYTES` left (looked at as each part opens and every
:data:`CHECK_EVERY` frames). A write that fails (a full disk, an I/O error) stops the run instead
(:class:`edgeseg.fsutil.WriteFailed`, exit code 4): the CSV part in progress keeps its complete rows (cut back to
the last frame written whole), a CTC / OME-TIFF part in progress is dropped, finished parts stay. A track that
spans two parts continues in the next one as a new track without a parent (CTC) and with the same ``track_id``
(CSV, OME-TIFF). Memory stays constant: the tracker keeps only the live tracks, the CTC writer one part's track
table.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.fsutil import atomic_path, atomic_write_text, part_path, write_failed
from edgeseg.measure import FIELDS, INT_FIELDS, measure, measure_region, replace_rows
from edgeseg.track import Tracker

PART_ROWS = 1_000_000  # CSV rows a part
PART_FRAMES = 1000  # frames a CTC / OME-TIFF part
PART_BYTES = 1 << 30  # raw label bytes an OME-TIFF part (before compression)
MAX_PARTS = 100  # parts an output writes before it stops
MIN_FREE_BYTES = 1 << 30  # an output stops when its disk has less than this left
CTC_MAX_LABEL = 65535
CHECK_EVERY = 100  # frames between two looks at the free disk space (and at every new part)


class OutputStopped(Exception):
    """An output reached its limit (parts or disk space) and was finalised."""


class _Output:
    """A file or folder written in parts; subclasses write one part."""

    kind = "output"

    def __init__(self, path: str | os.PathLike, max_parts: int, min_free: int):
        self.path = Path(path)
        self.max_parts, self.min_free = max_parts, min_free
        self.part = 0
        self.written: list[Path] = []
        self.stopped: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def check_room(self, every: int = 1) -> None:
        """Stop when the disk is nearly full (looked at every ``every`` calls)."""
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls % every:
            return
        if self.min_free and shutil.disk_usage(self.path.parent).free < self.min_free:
            raise OutputStopped(f"less than {self.min_free >> 20} MiB free on the disk of {self.path}")

    def next_part(self) -> Path:
        if self.part >= self.max_parts:
            raise OutputStopped(f"{self.max_parts} parts written")
        self.check_room()
        self.part += 1
        return part_path(self.path, self.part)


class _CsvOutput(_Output):
    kind = "csv"

    def __init__(self, path, fields: tuple[str, ...], part_rows: int, max_parts: int, min_free: int):
        super().__init__(path, max_parts, min_free)
        self.fields, self.part_rows = fields, part_rows
        self.rows = 0
        self._ctx = self._file = self._writer = None
        self._part_rows = 0

    def _open(self) -> None:
        target = self.next_part()
        self._ctx = atomic_path(target)
        tmp = self._ctx.__enter__()
        self._file = open(tmp, "w", newline="", encoding="utf-8")  # closed in _finish
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(self.fields)
        self._target, self._part_rows = target, 0
        self._file.flush()
        self._good = self._file.tell()
        self._tmp = tmp

    def write(self, columns: list[list]) -> None:
        """``columns``: one list of values a field (None -> empty cell)."""
        self.check_room(CHECK_EVERY)
        n = len(columns[0]) if columns else 0
        start = 0
        while start < n or self._file is None:
            if self._file is None:
                self._open()
            take = min(n - start, self.part_rows - self._part_rows)
            self._writer.writerows(zip(*(c[start:start + take] for c in columns), strict=True))
            self._part_rows += take
            self.rows += take
            start += take
            if self._part_rows >= self.part_rows:
                self._finish()
            if start >= n:
                break
        if self._file is not None:
            self._file.flush()
            self._good = self._file.tell()  # complete rows up to here

    def _finish(self) -> None:
        if self._file is None:
            return
        self._file.close()
        ctx, self._ctx, self._file = self._ctx, None, None
        ctx.__exit__(None, None, None)
        self.written.append(self._target)

    def close(self) -> None:
        if self._file is None and not self.written and self.stopped is None:
            self._open()  # a run with no nucleus still writes the header
        self._finish()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            ctx, self._ctx, self._file = self._ctx, None, None
            ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def salvage(self) -> None:
        """After a failed write: the part in progress, cut back to its last complete frame, under its name."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.close()  # may try to flush the failed rows again
        self._file = None
        try:
            os.truncate(self._tmp, self._good)
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)
            self.written.append(self._target)
        except OSError:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


class _CtcOutput(_Output):
    """Cell Tracking Challenge result folders (``maskNNN.tif`` + ``res_track.txt``), one a part."""

    kind = "ctc_out"

    def __init__(self, path, part_frames: int, max_parts: int, min_free: int):
        super().__init__(path, max_parts, min_free)
        self.part_frames = part_frames
        self.digits = max(3, len(str(part_frames - 1)))
        self.frames = 0
        self.labels_written = 0
        self._tmp: Path | None = None
        import tifffile  # here, not in the first frame of a live run

        self._imwrite = tifffile.imwrite
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise EdgesegError(f"{self.path} already exists", "give --ctc-out a new folder, or remove it")

    def _open(self) -> None:
        target = self.next_part()
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise OutputStopped(f"{target} already exists")
        self._target = target
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        self._f = 0  # frame counter in the part
        self._seg: dict[int, int] = {}  # track id -> its current CTC label
        self._tracks: dict[int, list[int]] = {}  # CTC label -> [B, E, P]

    def write(self, labels: np.ndarray, label_ids: np.ndarray, track_ids: np.ndarray, parents: np.ndarray) -> None:
        self.check_room(CHECK_EVERY)
        if self._tmp is None or self._f >= self.part_frames or len(self._tracks) + len(track_ids) > CTC_MAX_LABEL:
            self._finish()
            self._open()
        f = self._f
        ctc = np.zeros(len(track_ids), np.int64)
        for i, (tid, parent) in enumerate(zip(track_ids.tolist(), parents.tolist(), strict=True)):
            lab = self._seg.get(tid)
            if lab is not None and self._tracks[lab][1] == f - 1:  # continues
                self._tracks[lab][1] = f
            else:  # new, or back after a gap (parent: the label before the gap), or a daughter
                p = lab if lab is not None else self._seg.get(parent, 0) if parent else 0
                lab = len(self._tracks) + 1
                self._tracks[lab] = [f, f, p]
                self._seg[tid] = lab
            ctc[i] = lab
        lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint16)
        lut[label_ids] = ctc
        self._imwrite(self._tmp / f"mask{f:0{self.digits}d}.tif", lut[labels])
        self._f += 1
        self.frames += 1

    def _finish(self) -> None:
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        lines = "".join(f"{lab} {b} {e} {p}\n" for lab, (b, e, p) in self._tracks.items())
        atomic_write_text(tmp / "res_track.txt", lines)
        self.labels_written += len(self._tracks)
        if self._target.exists():
            self._target.rmdir()  # an empty folder (checked when the part opened)
        os.replace(tmp, self._target)
        self.written.append(self._target)

    def close(self) -> None:
        self._finish()

    def abort(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class _OmeOutput(_Output):
    """OME-TIFF label stacks (T, Y, X, uint32): frames are spooled to a raw file, the TIFF is written (in a
    background thread, compressed) when the part is full, so the loop does not wait for it."""

    kind = "labels_out"

    def __init__(self, path, um_per_px: float | None, part_frames: int, part_bytes: int, max_parts: int,
                 min_free: int):
        super().__init__(path, max_parts, min_free)
        self.um_per_px = um_per_px
        self.part_frames, self.part_bytes = part_frames, part_bytes
        self.frames = 0
        self._spool = None
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    def _open(self, shape: tuple[int, int]) -> None:
        target = self.next_part()
        fd, spool = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".spool", dir=target.parent)
        self._spool = (os.fdopen(fd, "wb"), Path(spool), target, shape)
        self._n = 0

    def write(self, image: np.ndarray) -> None:
        self.check_room(CHECK_EVERY)
        image = np.ascontiguousarray(image, np.uint32)
        shape = image.shape
        if self._spool is not None and (self._spool[3] != shape or self._n >= self.part_frames
                                        or (self._n + 1) * image.nbytes > self.part_bytes):
            self._finish()
        if self._spool is None:
            self._open(shape)
        self._spool[0].write(image.tobytes())
        self._n += 1
        self.frames += 1

    def _finish(self) -> None:
        if self._spool is None:
            return
        f, spool, target, shape = self._spool
        self._spool = None
        f.close()
        n = self._n
        thread = threading.Thread(target=self._write_tiff, args=(spool, target, shape, n), daemon=False,
                                  name="edgeseg-ome-writer")
        thread.start()
        self._threads.append(thread)
        self.written.append(target)

    def _write_tiff(self, spool: Path, target: Path, shape: tuple[int, int], n: int) -> None:
        import tifffile

        try:
            frames = np.memmap(spool, np.uint32, "r", shape=(n, *shape)) if n else np.zeros((0, *shape), np.uint32)
            metadata = {"axes": "TYX"}
            if self.um_per_px is not None:
                metadata.update(PhysicalSizeX=self.um_per_px, PhysicalSizeY=self.um_per_px,
                                PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
            with atomic_path(target) as tmp, tifffile.TiffWriter(tmp, ome=True, bigtiff=frames.nbytes > 2**31) as tif:
                tif.write(iter(frames), shape=frames.shape, dtype=np.uint32, metadata=metadata,
                          compression="zlib", compressionargs={"level": 1})
            del frames
        except BaseException as exc:  # reported by close()
            self._errors.append(exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                spool.unlink()

    def join(self) -> None:
        for t in self._threads:
            t.join()
        self._threads = []
        if self._errors:
            exc, self._errors = self._errors[0], []
            raise exc

    def close(self) -> None:
        self._finish()
        self.join()

    def abort(self) -> None:
        if self._spool is not None:
            f, spool, _, _ = self._spool
            self._spool = None
            f.close()
            with contextlib.suppress(FileNotFoundError):
                spool.unlink()
        with contextlib.suppress(BaseException):
            self.join()


class MeasureSink:
    """Measure, track and write every frame of a live run. See the module docstring for the outputs and their
    limits; ``part_rows``, ``part_frames``, ``part_bytes``, ``max_parts`` and ``min_free_bytes`` change them.
    The CSV's columns are fixed by the first frame (a later frame with other channels leaves them empty)."""

    def __init__(self, *, track: bool = True, csv: str | None = None, ctc_out: str | None = None,
                 labels_out: str | None = None, um_per_px: float | None = None, tracker: Tracker | None = None,
                 part_rows: int = PART_ROWS, part_frames: int = PART_FRAMES, part_bytes: int = PART_BYTES,
                 max_parts: int = MAX_PARTS, min_free_bytes: int = MIN_FREE_BYTES):
        if ctc_out and not track:
            raise EdgesegError("--ctc-out writes tracks but tracking is off", "drop --no-track")
        if um_per_px is not None and not (np.isfinite(um_per_px) and um_per_px > 0):
            raise EdgesegError(f"--um-per-px {um_per_px} is not a pixel size", "give micrometres a pixel, > 0")
        self.um_per_px = None if um_per_px is None else float(um_per_px)
        self.tracker = (tracker or Tracker()) if track else None
        self._csv_path, self._part_rows = csv, part_rows
        self._limits = (max_parts, min_free_bytes)
        self._outputs: dict[str, _Output] = {}
        if ctc_out:
            self._outputs["ctc_out"] = _CtcOutput(ctc_out, part_frames, *self._limits)
        if labels_out:
            self._outputs["labels_out"] = _OmeOutput(labels_out, self.um_per_px, part_frames, part_bytes,
                                                     *self._limits)
        self.frames = 0
        self.rows = 0
        self.tracks_started = 0
        self.divisions = 0

    def process(self, frame, result) -> dict:
        """Measure and track one frame, write it; returns the fields for this frame's log record (``tracks``:
        nuclei tracked in this frame, ``new_tracks``, ``divisions``: ``[[parent, daughter, daughter]]``; ``split``
        and ``outputs_stopped`` when they happen) and sets ``result.track_ids`` (``{label: track id}``; None
        without tracking). ``result.labels``/``count`` are replaced where the tracker cut merged nuclei."""
        image = _rgb_order(frame.image, getattr(frame, "order", "rgb"))
        m = measure(result.labels, image, um_per_px=self.um_per_px, frame_index=int(frame.index),
                    timestamp=float(frame.timestamp))
        record: dict = {}
        track_ids = parents = None
        if self.tracker is not None:
            step = self.tracker.update(result.labels, m)
            if step.split_labels is not None:  # the tracker cut nuclei the segmentation had merged
                record["split"] = int(step.labels.size - len(m))  # nuclei added by the cuts
                result.labels = step.split_labels
                result.count = int(step.labels.size)
                m = replace_rows(m, measure_region(result.labels, image, step.split_region, step.split_changed,
                                                   um_per_px=self.um_per_px, frame_index=int(frame.index),
                                                   timestamp=float(frame.timestamp)))
            track_ids, parents = step.track_ids, step.parents
            result.track_ids = step.mapping()
            self.tracks_started += len(step.started)
            self.divisions += len(step.divisions)
            record.update(tracks=step.n_live, new_tracks=len(step.started),
                          divisions=[list(d) for d in step.divisions])
        else:
            result.track_ids = None
        self.frames += 1
        self.rows += len(m)
        if len(m):  # the live page's series plots it
            record["mean_area"] = round(float(np.mean(m.columns["area"])), 2)
        if self._csv_path and "csv" not in self._outputs:
            self._outputs["csv"] = _CsvOutput(self._csv_path, self._csv_fields(m.fields), self._part_rows,
                                              *self._limits)
        for kind, out in self._outputs.items():
            if out.stopped:
                continue
            try:
                if kind == "csv":
                    cols = {**m.columns, "track_id": track_ids, "parent_id": parents}
                    out.write([_cells(f, cols.get(f), len(m)) for f in out.fields])
                elif kind == "ctc_out":
                    out.write(result.labels, m.columns["label"], track_ids, parents)
                else:
                    out.write(_paint(result.labels, m.columns["label"], track_ids))
            except OutputStopped as exc:
                out.stopped = str(exc)
                with contextlib.suppress(Exception):
                    out.close()
                record.setdefault("outputs_stopped", {})[kind] = str(exc)
            except OSError as exc:  # a full disk, an I/O error: the run stops (exit 4), what was complete stays
                out.stopped = str(exc)
                with contextlib.suppress(Exception):
                    out.salvage() if kind == "csv" else out.abort()
                raise write_failed(out.path, exc) from exc
        return record

    def _csv_fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        return fields if self.tracker is None else (*fields[:2], "track_id", "parent_id", *fields[2:])

    def close(self) -> dict:
        """Finalise every output (the last part of each renamed onto its name); returns the summary fields:
        frames, nuclei rows, tracks and divisions, and per output the paths of its parts."""
        if self._csv_path and "csv" not in self._outputs:  # no frame: the header alone
            self._outputs["csv"] = _CsvOutput(self._csv_path, self._csv_fields(FIELDS), self._part_rows,
                                              *self._limits)
        out: dict = {"frames": self.frames, "nuclei_rows": self.rows}
        if self.tracker is not None:
            out.update(tracks=self.tracks_started, divisions=self.divisions)
        failed = None
        for kind, o in self._outputs.items():
            if not o.stopped:
                try:
                    o.close()
                except OSError as exc:  # the last part could not be finished: keep what was complete
                    o.stopped = str(exc)
                    with contextlib.suppress(Exception):
                        o.salvage() if kind == "csv" else o.abort()
                    failed = failed or write_failed(o.path, exc)
            out[kind] = [str(p) for p in o.written]
        stopped = {kind: o.stopped for kind, o in self._outputs.items() if o.stopped}
        if stopped:
            out["outputs_stopped"] = stopped
        if failed is not None:
            raise failed
        return out

    def abort(self) -> None:
        """Drop the parts in progress (their temporary files removed); finished parts stay."""
        for o in self._outputs.values():
            o.abort()


def _paint(labels: np.ndarray, label_ids: np.ndarray, track_ids: np.ndarray | None) -> np.ndarray:
    """The label image with each nucleus painted with its track id (the labels themselves without tracking)."""
    if track_ids is None:
        return labels
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint32)
    lut[label_ids] = track_ids
    return lut[labels]


def _cells(field: str, values, n: int) -> list:
    """A column as CSV cells: ints for counts and indices, floats as Python writes them, empty for unknown."""
    if values is None:
        return [None] * n
    arr = np.asarray(values)
    missing = np.isnan(arr) if arr.dtype.kind == "f" else None
    as_int = field in INT_FIELDS or field in ("track_id", "parent_id")
    out = (np.where(missing, 0, arr) if missing is not None and as_int else arr)
    out = out.astype(np.int64).tolist() if as_int else out.astype(np.float64).tolist()
    if missing is not None and missing.any():
        for i in np.flatnonzero(missing).tolist():
            out[i] = None
    return out


def _rgb_order(image: np.ndarray, order: str) -> np.ndarray:
    """The frame with its colour channels in RGB order (a BGR/BGRA frame reversed; alpha stays last)."""
    if order == "bgr" and image.ndim == 3 and image.shape[2] >= 3:
        return np.concatenate([image[..., 2::-1], image[..., 3:]], axis=2)
    return image
