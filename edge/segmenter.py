"""``Segmenter``: the Python API that the runtime, eval, bench and the INT8 guard all use (torch-free).

    from edgeseg import Segmenter
    with Segmenter.load("fast_scnn-int8") as seg:   # a zoo name, a model file, or a run folder (needs torch)
        result = seg(frame)                           # any frame: 8/16-bit, mono/RGB/RGBA, any size
    result.count, result.labels, result.mask, result.timings, result.table(), result.plot(), result.to_dict()

One door for every model: :meth:`Segmenter.load` resolves the MODEL, reads its card once
(:class:`edgeseg.card.ModelCard`) and opens it with a backend from the registry (:mod:`edgeseg.backends`: ONNX
Runtime and OpenVINO here, torch when ``edgeseg[train]`` is installed). The scale at which each frame runs is
planned by :class:`edgeseg.scale.ScalePolicy` (``tile=``, ``diameter=``, and ``remember_scale=`` for one estimate
per frame size in a live run; ``sizer=``: the network that measures the nuclei where the card names one); the
Segmenter runs the plan: resize or tiles, the network, the post-processing.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .card import ModelCard, as_card
from .errors import EdgesegError, ModelError
from .measure import FIELDS, measure
from .postprocess import PostprocessConfig, postprocess_scored, stitch
from .preprocess import normalise, resize_to, to_rgb8
from .scale import TILE_OVERLAP, Plan, ScalePolicy, Sizer, scaled_tiles, tile_mode

TABLE_FIELDS = FIELDS  # the columns of table() and to_csv() (edgeseg.measure), per-channel ones after them


@dataclass
class Segmentation:
    """One frame's result. ``rgb`` is the 8-bit RGB frame the network saw (converted once: the overlay reuses it)."""

    mask: np.ndarray  # bool H x W at the frame size
    labels: np.ndarray  # int32 H x W: 0 background, 1..count
    count: int
    probs: np.ndarray  # float32 C x h x w: at the input size, or the stitched map when tiled
    timings: dict = field(default_factory=dict)  # milliseconds per stage
    tiled: bool = False
    scale: float = 1.0  # frame -> network pixels
    n_tiles: int = 1
    rgb: np.ndarray | None = field(default=None, repr=False)
    scale_source: str = "resize"  # how the scale was chosen: resize | native | estimate | diameter | remembered
    diameter_px: float | None = None  # the nucleus diameter (frame pixels) the scale was planned for
    track_ids: dict | None = field(default=None, repr=False)  # label -> track id, set by a tracker (MeasureSink)
    # per object 1..count: "confidence" (mean foreground probability) and "contrast" against the background ring
    # around it (edgeseg.postprocess.object_scores), what the card's min_confidence / min_contrast filter on
    scores: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready: the count and how the frame was run (no arrays)."""
        return {"count": self.count, "tiled": self.tiled, "scale": round(float(self.scale), 4),
                "n_tiles": self.n_tiles, "scale_source": self.scale_source,
                "diameter_px": None if self.diameter_px is None else round(float(self.diameter_px), 2),
                "timings_ms": {k: round(float(v), 3) for k, v in self.timings.items()}}

    def table(self, frame: np.ndarray | None = None, *, um_per_px: float | None = None,
              frame_index: int | None = None, timestamp: float | None = None) -> list[dict]:
        """One row per nucleus (:data:`TABLE_FIELDS`, then per-channel intensities for a multi-channel frame):
        label, centroid, area, equivalent diameter, perimeter, eccentricity, solidity, bounding box (y0, x0
        inclusive; y1, x1 exclusive), mean and integrated intensity, and with ``um_per_px`` the same in
        micrometres; defined as scikit-image's ``regionprops`` defines them (:mod:`edgeseg.measure`, one
        vectorised pass over the label image).

        ``frame``: the original frame this result came from (any dtype, mono or multi-channel), whose
        intensities are measured; without it, the 8-bit RGB copy ``rgb`` is measured."""
        image = frame if frame is not None else self.rgb
        rows = measure(self.labels, image, um_per_px=um_per_px, frame_index=frame_index, timestamp=timestamp).rows()
        fresh = self.scores and all(len(v) == self.count for v in self.scores.values())  # not after a tracker's cut
        for row in rows if fresh else ():  # the scores the object filter used, per nucleus
            for key, values in self.scores.items():
                row[key] = round(float(values[int(row["label"]) - 1]), 4)
        return rows

    def to_csv(self, path: str | Path, frame: np.ndarray | None = None, *, um_per_px: float | None = None,
               frame_index: int | None = None, timestamp: float | None = None) -> Path:
        """Write :meth:`table` as CSV (written to a temporary name, then renamed; unknown values left empty)."""
        import csv
        import io

        from .fsutil import atomic_write_text

        m = measure(self.labels, frame if frame is not None else self.rgb, um_per_px=um_per_px,
                    frame_index=frame_index, timestamp=timestamp)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=m.fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(m.rows())
        return atomic_write_text(path, buf.getvalue())

    def plot(self, style: str = "contours", caption: str | None = None) -> np.ndarray:
        """The frame with one outline per nucleus and the count, as a BGR uint8 image (for ``cv2.imwrite``)."""
        import cv2

        from .draw import draw

        if self.rgb is None:
            raise ValueError("this Segmentation keeps no frame to draw on")
        return draw(cv2.cvtColor(self.rgb, cv2.COLOR_RGB2BGR), self.labels, self.count, style=style, caption=caption)


class Segmenter:
    """A predictor plus its card: frame in, nuclei out. Use :meth:`load`, or wrap any predictor with a card."""

    def __init__(
        self,
        predict,
        card: ModelCard | dict | None = None,
        *,
        threshold: float | None = None,
        tile="auto",
        channel: str = "auto",
        diameter: float | None = None,
        remember_scale: bool = False,
        post: PostprocessConfig | None = None,
        backend_info: dict | None = None,
        name: str | None = None,
        sizer=None,
    ):
        self.predict = predict
        self.backend = predict if hasattr(predict, "close") else None
        self.card = as_card(card)
        self.name = name or self.card.name
        self.input_size = self.card.size
        self.mean, self.std = self.card.mean, self.card.std
        post = post or self.card.post_config()
        if threshold is not None:
            if not 0.0 <= float(threshold) <= 1.0:
                raise EdgesegError(f"threshold {threshold} is not a probability", "give a value from 0 to 1")
            post = PostprocessConfig.from_dict({**post.to_dict(), "threshold": float(threshold)})
        self.post = post
        self.tile = tile_mode(tile)
        self.channel = channel
        self.scale_policy = ScalePolicy(
            self.input_size, tile=self.tile, training_diameter=self.card.training_diameter,
            training_diameters=self.card.training_diameters, diameter=diameter,
            measure_post=PostprocessConfig(threshold=post.threshold, min_size=post.min_size),
            cache={} if remember_scale else None, sizer=None if sizer is None else self._open_sizer)
        self._sizer = sizer  # a Segmenter that measures the nuclei for this one, or a callable that opens one
        self.backend_info = dict(backend_info or {})
        self._predict_lock = threading.Lock()

    # ------------------------------------------------------------------ loading and closing

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        backend: str = "auto",
        threads: int | None = None,
        threshold: float | None = None,
        tile="auto",
        channel: str = "auto",
        diameter: float | None = None,
        remember_scale: bool = False,
        verify: bool = True,
        warm_up: bool = True,
        sizer: bool | str = True,
        **backend_options,
    ) -> Segmenter:
        """A zoo name, a model file (``.onnx``, ``.xml``, ``.pt``) or a run folder -> a ready Segmenter.

        The backend comes from the registry (``auto``: the one native to the file's format); PyTorch checkpoints
        need ``edgeseg[train]``. ``backend_options`` go to the backend (``tta=True`` for torch,
        ``inference_precision`` for OpenVINO). With ``warm_up`` the model runs once on a blank input before it is
        returned (:meth:`warm_up`): a file that loads but cannot run, or whose output does not match its card, is a
        one-line :class:`~edgeseg.errors.ModelError` here rather than a traceback at the first frame.

        With ``sizer=True`` (the default), a network whose card names another to measure its nuclei
        (``training_scale.measured_by``) has them measured by that network's file of the same precision in the zoo,
        opened when a frame first needs measuring; ``info["scale_measured_by"]`` says which file, or that the
        network measures itself because that network is not installed. ``sizer=False``: the network measures
        itself; a network name: that network measures, whatever the card says."""
        from .backends import open_backend

        path, fmt, card = _resolve(model, verify)
        be = open_backend(path, backend, threads, card=card, **backend_options)
        try:
            _check_shapes(be, card, Path(path))
        except ModelError:
            be.close()
            raise
        info = {"model": card.name, "path": str(path), "format": fmt, "precision": card.precision, **be.info()}
        opener = None
        measured_by = card.measured_by if sizer is True else (sizer or None)
        if measured_by and measured_by != card.network:
            ref = _sizer_ref(measured_by, card.precision, Path(path).parent)
            info["scale_measured_by"] = ref.name if ref else f"itself ({measured_by} is not installed)"
            if ref is not None:
                def opener(ref=ref):
                    return cls.load(ref.path, threads=threads, verify=verify, sizer=False)
        try:
            seg = cls(be, card, threshold=threshold, tile=tile, channel=channel, diameter=diameter,
                      remember_scale=remember_scale, backend_info=info, sizer=opener)
            if warm_up:
                seg.warm_up()
        except BaseException:
            be.close()
            raise
        return seg

    def warm_up(self) -> None:
        """Run the model once on a blank input and check its output against the card (``1 x C x H x W``: the card's
        output channels and input size). A runtime that loads a file but cannot run it (seen: OpenVINO on some ARM
        CPUs) or an output of another size is a one-line :class:`~edgeseg.errors.ModelError`."""
        h, w = self.card.input_size
        try:
            out = np.asarray(self.predict(np.zeros((1, 3, h, w), np.float32)))
        except EdgesegError:
            raise
        except Exception as exc:
            raise ModelError(f"{self.name} fails at its first inference ({_first_line(exc)})",
                             "try the other --backend (onnxruntime or openvino), or re-export the model") from exc
        expected = (1, self.card.out_channels, h, w)
        if out.shape != expected:
            raise ModelError(f"{self.name} gives output {list(out.shape)} but its card says {list(expected)}",
                             "re-export the model so the file and its card match")

    def _open_sizer(self) -> Sizer | None:
        """The :class:`~edgeseg.scale.Sizer` for this Segmenter's policy, its network opened now if need be; None when
        it cannot be opened (a damaged or missing file): this network then measures the nuclei itself, says so on
        stderr and in ``info["scale_measured_by"]``, and the frame goes on."""
        if not isinstance(self._sizer, Segmenter):
            try:
                self._sizer = self._sizer()
            except EdgesegError as exc:
                self._sizer = None
                self.backend_info["scale_measured_by"] = f"itself (the measuring network failed: {exc.problem})"
                print(f"note: the network that measures the nuclei for {self.name} cannot run ({exc.problem}): "
                      f"{self.name} measures them itself", file=sys.stderr, flush=True)
                return None
        return Sizer(self._sizer.name, self._sizer.scale_policy, self._sizer._infer)

    def close(self) -> None:
        """Release the backend, and the sizer's if it was opened (the Segmenter must not be used afterwards)."""
        if self.backend is not None:
            self.backend.close()
        if isinstance(self._sizer, Segmenter):
            self._sizer.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def info(self) -> dict:
        """What runs: model, backend, precision (of the file) and executed precision, threads."""
        out = {"model": self.name, "precision": self.card.precision,
               "backend": "custom", "executed_precision": self.card.precision, "threads": None}
        out.update(self.backend_info)
        out["tile"] = self.tile
        if self.scale_policy.diameter is not None:
            out["diameter_px"] = self.scale_policy.diameter
        return out

    # ------------------------------------------------------------------ inference

    def _infer(self, rgb_tiles: list[np.ndarray], ms: dict | None = None) -> np.ndarray:
        """uint8 RGB input-size tiles -> probabilities; adds normalisation to ``ms["preprocess"]`` and the
        network to ``ms["inference"]`` when ``ms`` is given."""
        t0 = time.perf_counter()
        x = normalise(np.stack(rgb_tiles), self.mean, self.std)
        t1 = time.perf_counter()
        probs = self._predict(x)
        if ms is not None:
            ms["preprocess"] += (t1 - t0) * 1e3
            ms["inference"] += (time.perf_counter() - t1) * 1e3
        return probs

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """The network on a normalised batch; one call at a time (an OpenVINO infer request is not reentrant, and a
        pipelined run may measure a new frame size in one thread while another runs the network)."""
        with self._predict_lock:
            return np.asarray(self.predict(x), np.float32)

    def resized_probs(self, frame: np.ndarray, order: str = "rgb") -> np.ndarray:
        """The paper's protocol: the whole frame resized to the input size -> C x S x S probabilities."""
        rgb = to_rgb8(frame, self.channel, order)
        return self._infer([resize_to(rgb, self.input_size)])[0]

    # A frame goes through three steps, which a pipelined run (edgeseg.device.live) overlaps in its threads:
    # prepare (8-bit RGB, the scale plan, resize, tiles, normalisation) -> infer (the network alone) -> finish
    # (stitching, the post-processing). Called one after another they are exactly ``seg(frame)``.

    def prepare(self, frame: np.ndarray, order: str = "rgb") -> Prepared:
        """Everything before the network: the frame as 8-bit RGB, its scale plan, and the normalised batch of input
        tiles (None when the plan measured the frame with the network and kept that prediction)."""
        t_convert = time.perf_counter()
        rgb = to_rgb8(frame, self.channel, order)
        t0 = time.perf_counter()
        convert_ms = (t0 - t_convert) * 1e3
        ms = {"preprocess": convert_ms, "inference": 0.0}
        plan = self.scale_policy.plan(rgb, lambda tiles: self._infer(tiles, ms))
        booked = ms["preprocess"] + ms["inference"] - convert_ms
        # measuring the nuclei to plan the tiles counts as preprocessing, less what _infer booked itself
        ms["preprocess"] += (time.perf_counter() - t0) * 1e3 - booked
        prep = Prepared(frame.shape[:2], rgb, plan, ms)
        t1 = time.perf_counter()
        if plan.scale is None:
            if plan.coarse is not None:
                prep.probs = plan.coarse
            else:
                prep.batch = normalise(resize_to(rgb, self.input_size)[None], self.mean, self.std)
        else:
            prep.scaled, prep.grid, prep.batch = self._tile_batch(rgb, plan.scale)
        ms["preprocess"] += (time.perf_counter() - t1) * 1e3
        if plan.scale is not None and plan.refine:
            # a small frame at native scale, the first of its size: its nuclei may ask for another scale, which
            # the policy then remembers; settled here, before the next frame is prepared, so that a pipelined run
            # plans every later frame as a sequential one would
            prep.probs, prep.n_tiles, prep.plan = self._refined(self.infer(prep))
        return prep

    def infer(self, prep: Prepared) -> Prepared:
        """The network on the prepared batch (nothing else: this is the step a pipelined run gives its own thread)."""
        if prep.batch is not None:
            t1 = time.perf_counter()
            prep.tile_probs = self._predict(prep.batch)
            prep.ms["inference"] += (time.perf_counter() - t1) * 1e3
            prep.batch = None
        return prep

    def finish(self, prep: Prepared) -> Segmentation:
        """Stitching and post-processing: a prepared and inferred frame -> its :class:`Segmentation`."""
        probs, run = self._stitched(prep)
        t1 = time.perf_counter()
        mask, labels, scores = postprocess_scored(probs, prep.shape, self.post, run["rgb"])
        timings = dict(run["timings"], postprocess=(time.perf_counter() - t1) * 1e3)
        return Segmentation(mask, labels, int(labels.max(initial=0)), probs, timings, run["tiled"], run["scale"],
                            run["n_tiles"], run["rgb"], run["scale_source"], run["estimated_diameter_px"],
                            scores=scores)

    def probabilities(self, frame: np.ndarray, order: str = "rgb") -> tuple[np.ndarray, dict]:
        """Frame -> (probabilities C x h x w, what ran) following the scale policy: ``tiled``, ``scale``,
        ``n_tiles``, ``scale_source``, ``estimated_diameter_px``, ``timings`` (ms) and the ``rgb`` frame."""
        t0 = time.perf_counter()
        probs, run = self._stitched(self.infer(self.prepare(frame, order)))
        run["total_ms"] = (time.perf_counter() - t0) * 1e3
        return probs, run

    def _stitched(self, prep: Prepared) -> tuple[np.ndarray, dict]:
        """The inferred tiles as one probability map, and what ran."""
        ms, plan, rgb = prep.ms, prep.plan, prep.rgb
        h, w = rgb.shape[:2]
        if prep.probs is not None:
            probs, n_tiles = prep.probs, prep.n_tiles
        else:
            t1 = time.perf_counter()
            probs, n_tiles = self._stitch(prep)
            ms["preprocess"] += (time.perf_counter() - t1) * 1e3
        return probs, {"tiled": plan.scale is not None, "scale": self.input_size / max(h, w) if plan.scale is None
                       else plan.scale, "n_tiles": n_tiles, "estimated_diameter_px": plan.diameter_px,
                       "scale_source": plan.source, "timings": ms, "rgb": rgb}

    def _stitch(self, prep: Prepared) -> tuple[np.ndarray, int]:
        if prep.grid is None:
            return prep.tile_probs[0], 1
        return stitch(prep.tile_probs, prep.grid, prep.scaled, self.input_size, TILE_OVERLAP), len(prep.grid)

    def _refined(self, prep: Prepared) -> tuple[np.ndarray, int, Plan]:
        """A ``native`` plan that ran -> (probabilities, tiles, plan): run once more at the scale its nuclei ask
        for (``ScalePolicy.refine``), or kept as it is."""
        ms = prep.ms
        t1 = time.perf_counter()
        probs, n_tiles = self._stitch(prep)
        better = self.scale_policy.refine(prep.plan, probs, prep.rgb)
        ms["preprocess"] += (time.perf_counter() - t1) * 1e3
        if better is None:
            return probs, n_tiles, prep.plan
        probs, n_tiles = self._tiled(prep.rgb, better.scale, ms)
        return probs, n_tiles, better

    def _tile_batch(self, rgb: np.ndarray, scale: float):
        """The frame rescaled by ``scale`` and cut into overlapping input-size tiles -> (scaled size, grid, the
        normalised batch)."""
        size, grid, tiles = scaled_tiles(rgb, scale, self.input_size)
        return size, grid, normalise(np.stack(tiles), self.mean, self.std)

    def _tiled(self, rgb: np.ndarray, scale: float, ms: dict) -> tuple[np.ndarray, int]:
        """The frame rescaled by ``scale``, cut into overlapping input-size tiles, run, stitched."""
        t1 = time.perf_counter()
        size, grid, batch = self._tile_batch(rgb, scale)
        t2 = time.perf_counter()
        tile_probs = self._predict(batch)
        t3 = time.perf_counter()
        probs = stitch(tile_probs, grid, size, self.input_size, TILE_OVERLAP)
        ms["preprocess"] += ((t2 - t1) + (time.perf_counter() - t3)) * 1e3
        ms["inference"] += (t3 - t2) * 1e3
        return probs, len(grid)

    def __call__(self, frame: np.ndarray, order: str = "rgb") -> Segmentation:
        return self.finish(self.infer(self.prepare(frame, order)))


class Prepared:
    """A frame between :meth:`Segmenter.prepare` and :meth:`Segmenter.finish`: its 8-bit RGB copy, the scale plan,
    the normalised input batch (until :meth:`Segmenter.infer` ran it), and the stage times so far (ms)."""

    __slots__ = ("shape", "rgb", "plan", "ms", "batch", "tile_probs", "probs", "n_tiles", "grid", "scaled")

    def __init__(self, shape: tuple[int, int], rgb: np.ndarray, plan, ms: dict):
        self.shape, self.rgb, self.plan, self.ms = tuple(shape), rgb, plan, ms
        self.batch: np.ndarray | None = None  # N x 3 x S x S, float32
        self.tile_probs: np.ndarray | None = None  # N x C x S x S
        self.probs: np.ndarray | None = None  # the prediction, when prepare made it (to plan the scale)
        self.n_tiles = 1  # the tiles that prediction took
        self.grid: list[tuple[int, int]] | None = None  # tile corners; None: the whole frame resized
        self.scaled: tuple[int, int] | None = None  # the rescaled frame's size the tiles were cut from


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _sizer_ref(network: str, precision: str, beside: Path):
    """The file of ``network``, which measures another's nuclei: in the folder ``beside`` (an installed bundle's
    models) or else the zoo; of ``precision`` where there is one, else any exported one (this CPU's flavour first);
    None if that network is in neither."""
    from .zoo import Zoo

    for zoo in (Zoo(beside), Zoo()):
        found = zoo.variants(network, precision=precision) or zoo.variants(network)
        if found:
            return found[0]
    return None


def _resolve(model, verify: bool) -> tuple[Path, str, ModelCard]:
    """A MODEL argument -> (file, format, card); an exported file with no card beside it uses its embedded one."""
    from .backends import read_embedded_card
    from .card import card_path
    from .zoo import FORMATS, resolve_model

    p = Path(model)
    if p.is_file() and p.suffix.lower() == ".xml" and not _looks_like_xml(p):
        # checked here: OpenVINO's readers would try it as every other format and print their own errors first
        raise ModelError(f"{p.name} is not an OpenVINO IR (not an XML file)", "re-export the model with edgeseg export")
    if p.is_file() and p.suffix.lower() in (".onnx", ".xml") and not card_path(p).exists():
        card = read_embedded_card(p)
        if card is None:
            raise ModelError(f"{p.name} has no model card beside it or inside it", "export it with edgeseg export")
        return p, FORMATS[p.suffix.lower()], ModelCard.from_dict(card, where=f"the card inside {p.name}")
    ref = resolve_model(model, verify=verify)  # checks the file (and an .xml's .bin) against its card
    return ref.path, ref.format, ref.card


def _looks_like_xml(path: Path) -> bool:
    """Whether a file starts like XML (``<``, after an optional byte-order mark and white space)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return True  # unreadable: the loader's own error says so
    return head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"<")


def _check_shapes(be, card: ModelCard, path: Path) -> None:
    """The file must take the card's input size and give the card's outputs."""
    expected = (3, *card.input_size)
    got = tuple(be.input_shape[1:])
    if any(g > 0 and g != e for g, e in zip(got, expected, strict=True)):
        raise ModelError(
            f"{path.name} takes input {be.input_shape} but its card says {[1, *expected]}",
            "re-export the model so the file and its card match",
        )
    if len(be.output_names) != card.out_channels:
        raise ModelError(
            f"{path.name} has {len(be.output_names)} outputs but its card says {card.out_channels}",
            "re-export the model so the file and its card match",
        )
