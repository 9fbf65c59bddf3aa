"""The scale policy: at which scale a frame is run, planned before it is run (torch-free).

A network only knows nuclei of the size it was trained on (the card's ``training_scale``: the median nucleus
diameter in input pixels, per image type where the card has it, since a mixed run learns DSB brightfield squeezed
to ~5 px and H&E crops at ~12 px). :meth:`ScalePolicy.plan` decides, for one frame, between

* ``resize``: the whole frame resized to the input size, as the paper does (frames near the input size, ``--tile
  never``, and large frames whose nuclei are big enough at the input size);
* ``native``: a frame smaller than the input is padded at native scale, not enlarged (nuclei would swell), then
  rescaled once (:meth:`ScalePolicy.refine`) if the nuclei seen in it are far from the training scale;
* ``estimate``: for a larger frame the nuclei are measured first (:meth:`ScalePolicy.nucleus_size`: in every
  view from the whole frame at the input size up to native scale, through the same few windows, the median
  taken); if they are smaller than the training scale at the input size (a 1000x1000 40x tissue tile squeezed to
  256x256), the frame is rescaled so its nuclei match the training scale and run as overlapping input-size tiles;
* ``diameter``: the caller says how large the nuclei are (``diameter=`` frame pixels, like Cellpose's
  ``diameter`` and StarDist's ``scale``): no estimate, the frame is rescaled to bring them to the training scale;
* ``remembered``: the scale planned before for a frame of this size (a live run: one estimate per frame size,
  not one per frame), when the policy was given a ``cache``.
* ``classical``: a fluorescence frame whose nuclei, measured from the image itself (:func:`classical_diameter`:
  Otsu's threshold and the same width measure, no network), are far larger than the training scale at the view it
  would run at or be measured from first (padded at native scale, or the whole frame resized; shrunk to SHRINK_TO
  training scales), or, in a frame smaller than the input, far smaller (enlarged). A network measures nuclei well
  only near the size it learnt (a weak one cuts nuclei three times that size into training-sized pieces and measures
  the pieces; it sees tiny ones as larger blobs; an accurate one measures a 4x clip's 88 px nuclei as 63), so the
  image's own measure decides where the network's cannot be trusted (the shipped clip at x2 and x4, DSB at x0.5).
  Otherwise, for larger frames the ``estimate`` takes the image's measure (fluorescence) where it is at least
  TRUST_RATIO times the network's, their geometric mean where the image's is larger by less, else the network's: a
  network cuts nuclei far bigger than it learnt into pieces (the shipped clip at x4: 5.5 px by ``half_unet`` against
  88 by the image), but the image's measure of a dense field of small nuclei can be one of clumps (a 603x1272 DSB
  test image of 7.6 px nuclei: 14.8 px by the image, 8.0 by ``shuffle_unet_px``; run at x0.84, the image's measure,
  its F1@0.5 was 0.31, at x1 0.67). An estimate never enlarges a frame: allowed to (up to x2) that image reached
  0.71 at x1.41, but speckled nucleus-free DSB backgrounds gained false nuclei (``fast_scnn``: 1.9 -> 2.75 a frame
  on 20 validation images). A larger fluorescence frame in which the image's measure finds fewer than MIN_OBJECTS
  nuclei is resized unmeasured.

A network whose own measure is weak may have its nuclei measured by another (``sizer``, a :class:`Sizer`; the
card's ``training_scale.measured_by``, chosen on validation by ``benchmarks/choose_sizer.py``): the sizer's views
give the diameter in frame pixels, and this network's training scale turns it into a scale ("one pass of the
accurate model per frame size"). A Fast-SCNN that merges small nuclei measures merged blobs: on the DSB2018
validation images at x0.5 the H&E Fast-SCNN refined a 180x180 frame down to x0.5 and counted 0.79 of its x1
count; measured by MobileNetV2-UNet, 0.87.

Estimated scales are snapped to a grid of quarter octaves (:func:`snapped`), so the small differences between
backends and CPUs (0.72 vs 0.77 for the same clip) give the same remembered scale.

``tile="always"`` tiles at the estimated scale (native scale if there is none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .data import image_type
from .errors import EdgesegError
from .otsu import MIN_SEPARATION, grey_of, otsu_split, separation
from .postprocess import PostprocessConfig, cut_tiles, postprocess, stitch, tile_grid
from .preprocess import resize_to

TILE_MODES = ("auto", "always", "never")
RESIZE_LIMIT = 1.25  # frames whose longer side is at most this many input sizes are always resized
MIN_SCALE_FRACTION = 1.0  # resize is kept while nuclei stay at least this fraction of the training scale
MIN_OBJECTS = 3  # a scale estimate needs at least this many nuclei
TILE_OVERLAP = 32
MAX_TILES = 64
MAX_UPSCALE = 4.0  # a given diameter may enlarge a frame this much at most
NATIVE_TOLERANCE = 1.2  # nuclei within 20 % of the training scale at native size are run at native size
PROBE_STEP = 2**0.5  # views between the whole-frame resize and native scale when measuring the nuclei
PROBE_POINTS = ((0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))  # window centres, fractions of the frame
SCALE_STEPS_PER_OCTAVE = 4  # estimated scales are snapped to powers of 2 ** (1 / 4)
MAX_REFINE_UPSCALE = 2.0  # a small frame whose nuclei are measured small may be enlarged this much at most
TOO_BIG = 3.0  # nuclei more than this many training scales wide at the planned view are shrunk ...
SHRINK_TO = 1.25  # ... to this many (the scale the small networks count best at: at 1x they merge touching nuclei)
TOO_SMALL = 1.5  # nuclei of a small fluorescence frame under 1 / this training scale are enlarged
TRUST_RATIO = 2.0  # an image's measure this many times the network's overrules it; a larger one under it is averaged
CLASSICAL_MIN_AREA = 12  # Otsu components smaller than this (frame px) are noise, not nuclei
SPECK_JUMP = 1.5  # a classical measure that grows this much when the frame is halved was one of specks
CLASSICAL_MIN_SIDE = 64  # a frame is not halved below this many pixels a side for the classical measure

Infer = Callable[[list[np.ndarray]], np.ndarray]  # uint8 RGB input-size tiles -> N x C x S x S probabilities


def tile_mode(tile) -> str:
    """``tile`` as one of TILE_MODES (True/False/None are accepted as always/never)."""
    if tile is True:
        return "always"
    if tile is False or tile is None:
        return "never"
    if tile not in TILE_MODES:
        raise ValueError(f"unknown tile mode {tile!r}; use one of: {', '.join(TILE_MODES)}")
    return tile


def nucleus_widths(labels: np.ndarray, interior_only: bool = False) -> np.ndarray:
    """Each object's largest distance to the background (its half-width, px); ``interior_only`` leaves out the
    objects that touch the image border, whose visible part is narrower than the nucleus."""
    import cv2

    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros(0, np.float32)
    inside = np.pad((labels > 0).astype(np.uint8), 1)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)[1:-1, 1:-1]
    radius = np.zeros(n + 1, np.float32)
    np.maximum.at(radius, labels.ravel(), dist.ravel())
    if interior_only:
        radius[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = 0
    return radius[1:][radius[1:] > 0]


def nucleus_diameter(labels: np.ndarray) -> float | None:
    """Typical nucleus diameter (px) in a label image: twice the median, over objects, of each object's largest
    distance to the background; None when there are too few objects.

    For a round nucleus that is its diameter (as the card's training scale, measured from true nuclei, is); for
    nuclei that the post-processing left merged - dense tissue seen at a too small scale - it is still the width
    of one nucleus, where an area-based diameter would grow with every nucleus in the clump. On the MoNuSeg test
    tiles this lifted MobileNetV2-UNet INT8 from 0.759 to 0.768 Dice (F1@0.5 0.559 to 0.622).
    """
    return typical_diameter(nucleus_widths(labels))


def typical_diameter(radii: np.ndarray) -> float | None:
    return float(2.0 * np.median(radii)) if len(radii) >= MIN_OBJECTS else None


def classical_diameter(rgb: np.ndarray) -> float | None:
    """Typical nucleus diameter (frame px) of a fluorescence frame measured without a network: the grey frame,
    smoothed (Gaussian, sigma 1 px), thresholded by Otsu's method, components under CLASSICAL_MIN_AREA pixels
    dropped, then :func:`nucleus_widths` of the interior ones (:func:`otsu_diameter`); None for other image types
    (stains and brightfield do not separate by one grey threshold) or too few objects.

    The frame is then measured again halved, as long as that at least SPECK_JUMP-folds the answer (in frame px):
    halving a frame only drops nuclei near the minimum area, so a measure that jumps is one of background specks
    that passed the area filter (a frame enlarged from a noisy one: its specks are blobs of many pixels), and the
    halved frame's measure of the nuclei is the better one. On the DSB2018 validation fluorescence images resized
    x0.5 / x1 / x2 / x4 its median ratio to the true median diameter is 1.06 / 1.01 / 0.99 / 0.96 with or without
    the halving (IQR at x1 0.96-1.08), but the images whose x2 / x4 measure is more than 30 % off their x1 measure
    go from 4 % / 7 % to none (SPECK_JUMP 1.3: 2 % / 2 %, and a quarter of the x0.5 ones off; 2.0: 0 % / 5 %).
    A dense frame of nuclei near the area filter also jumps (halved, its nuclei drop out and clumps are left): a
    603x1272 DSB test image of 7.6 px nuclei measures 5.1 px, halved 14.8."""
    import cv2

    if image_type(rgb[::4, ::4]) != "fluorescence":
        return None
    grey = grey_of(rgb)
    diameter, factor = otsu_diameter(grey), 1.0
    while diameter is not None and min(grey.shape) >= 2 * CLASSICAL_MIN_SIDE:
        grey = cv2.resize(grey, (grey.shape[1] // 2, grey.shape[0] // 2), interpolation=cv2.INTER_AREA)
        halved = otsu_diameter(grey)
        if halved is None or 2 * factor * halved < SPECK_JUMP * diameter:
            break
        diameter, factor = 2 * factor * halved, 2 * factor
    return diameter


def otsu_diameter(grey: np.ndarray) -> float | None:
    """:func:`typical_diameter` of the interior Otsu components of a grey frame (Gaussian sigma 1 px first); None
    where the split does not separate its classes by MIN_SEPARATION (:func:`separation`: noise, not nuclei)."""
    import cv2

    g, fg = otsu_split(grey)
    if separation(g, fg) < MIN_SEPARATION:
        return None  # one population of noise cut in two, not nuclei against a background
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8, ltype=cv2.CV_32S)
    keep = stats[:, cv2.CC_STAT_AREA] >= CLASSICAL_MIN_AREA
    keep[0] = False
    lut = np.where(keep, np.cumsum(keep), 0).astype(np.int32)
    return typical_diameter(nucleus_widths(lut[labels], interior_only=True))


def scaled_tiles(rgb: np.ndarray, scale: float, size: int) -> tuple[tuple[int, int], list, list[np.ndarray]]:
    """The frame rescaled by ``scale`` and cut into overlapping ``size`` x ``size`` tiles -> (the rescaled frame's
    size, the tile corners, the tiles)."""
    h, w = rgb.shape[:2]
    sh, sw = max(round(h * scale), 1), max(round(w * scale), 1)
    scaled = rgb if (sh, sw) == (h, w) else resize_to(rgb, (sh, sw))
    grid = tile_grid(sh, sw, size, TILE_OVERLAP)
    return (sh, sw), grid, cut_tiles(scaled, grid, size)


def snapped(scale: float) -> float:
    """``scale`` rounded to the nearest power of 2 ** (1 / SCALE_STEPS_PER_OCTAVE): estimates a few per cent apart
    (backend or CPU noise) plan the same scale."""
    return float(2.0 ** (round(np.log2(scale) * SCALE_STEPS_PER_OCTAVE) / SCALE_STEPS_PER_OCTAVE))


@dataclass(frozen=True)
class Sizer:
    """Another network that measures the nuclei for a policy: its name, its own policy (input size and the
    post-processing it measures with) and its ``infer`` (uint8 RGB input-size tiles -> probabilities)."""

    name: str
    policy: ScalePolicy
    infer: Infer


@dataclass(frozen=True)
class Plan:
    """What to run for one frame: ``scale`` None resizes the whole frame to the input size; a float runs tiles of the
    frame rescaled by it. ``coarse`` holds the whole-frame probabilities when measuring computed them already."""

    scale: float | None
    source: str  # resize | native | estimate | diameter | remembered | classical
    diameter_px: float | None = None  # the nucleus diameter in frame pixels (estimated or given)
    coarse: np.ndarray | None = None
    refine: bool = False  # a small frame padded at native scale: measure in the tiles and rescale once

    def describe(self) -> str:
        how = "whole frame resized" if self.scale is None else f"tiles at x{self.scale:.3g}"
        size = f", nuclei {self.diameter_px:.1f} px" if self.diameter_px else ""
        return f"{how} ({self.source}{size})"


class ScalePolicy:
    """Plans the scale of each frame for a network of ``input_size`` trained on nuclei of ``training_diameter``
    input pixels (``training_diameters`` per image type). ``diameter`` (frame pixels) overrides the estimate;
    ``cache`` (a dict, owned by the caller) remembers the plan per frame size. ``sizer`` (a :class:`Sizer`, or a
    callable that returns one, or None, when first needed) measures the nuclei in place of the network."""

    def __init__(self, input_size: int, *, tile="auto", training_diameter: float,
                 training_diameters: dict[str, float] | None = None, measure_post: PostprocessConfig,
                 diameter: float | None = None, cache: dict | None = None, sizer=None):
        self.input_size = int(input_size)
        self.tile = tile_mode(tile)
        self.training_diameter = float(training_diameter)
        self.training_diameters = dict(training_diameters or {})
        # nuclei are measured on plain connected components: a watershed tuned for nuclei of the training size
        # cuts larger ones into pieces, and the width of a merged clump is still one nucleus's width
        self.measure_post = measure_post
        if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
            raise EdgesegError(f"diameter {diameter!r} is not a size in pixels", "give a positive number")
        if diameter is not None and self.tile == "never":
            raise EdgesegError("a diameter rescales the frame, which --tile never forbids", "use --tile auto or always")
        self.diameter = None if diameter is None else float(diameter)
        self.cache = cache
        self._sizer = sizer

    @property
    def sizer(self) -> Sizer | None:
        """The network that measures the nuclei for this one (opened when first asked for), or None."""
        if self._sizer is not None and not isinstance(self._sizer, Sizer):
            self._sizer = self._sizer()
        return self._sizer

    # ------------------------------------------------------------------ planning

    def plan(self, rgb: np.ndarray, infer: Infer) -> Plan:
        """The plan for an 8-bit RGB frame; ``infer`` runs the network when the nuclei must be measured first."""
        h, w = rgb.shape[:2]
        s = self.input_size
        if self.cache is not None and (h, w) in self.cache:
            known = self.cache[(h, w)]
            return Plan(known.scale, "remembered", known.diameter_px)
        if self.diameter is not None:
            return Plan(self._tile_scale(self.diameter, h, w, self.target_diameter(rgb), given=True),
                        "diameter", self.diameter)
        if self.tile == "never":
            return Plan(None, "resize")
        classical = classical_diameter(rgb) if self.tile == "auto" else None
        if self.tile == "auto":
            plan = self._classical_plan(classical, h, w, self.target_diameter(rgb))
            if plan is not None:
                self._remember(h, w, plan)
                return plan
        if self.tile == "auto" and max(h, w) <= RESIZE_LIMIT * s:
            if max(h, w) >= s:
                return Plan(None, "resize")
            return Plan(1.0, "native", refine=True)  # remembered once refined to another scale (see refine)
        if self.tile == "auto" and classical is None and image_type(rgb[::4, ::4]) == "fluorescence":
            # the image shows fewer than MIN_OBJECTS nuclei: what a network measures in its finer views is noise
            # enlarged to blobs, and tiling at that scale counts them (a near-empty DSB image x4: 2 -> 82)
            return Plan(None, "estimate")
        sizer = self.sizer
        if sizer is None:
            coarse = infer([resize_to(rgb, s)])[0]
            diameter = self.nucleus_size(rgb, coarse, infer)
        else:  # the sizer's views measure; this network runs once the scale is known
            coarse, diameter = None, sizer.policy.nucleus_size(rgb, None, sizer.infer)
        if classical is not None and (diameter is None or classical >= TRUST_RATIO * diameter):
            diameter = classical  # a network measures the pieces of nuclei too big for it: the image's wins
        elif classical is not None and classical > diameter:
            diameter = float(np.sqrt(classical * diameter))  # two rough measures, less than twofold apart
        plan = Plan(self._tile_scale(diameter, h, w, self.target_diameter(rgb)), "estimate", diameter, coarse)
        if diameter is not None:  # nothing measured: try again on the next frame of this size
            self._remember(h, w, plan)
        return plan

    def _classical_plan(self, classical: float | None, h: int, w: int, target: float) -> Plan | None:
        """A plan from the image's own nucleus measure when the nuclei are far too big at the view the frame would
        run at or be measured from first (padded at native scale, or the whole frame resized: shrunk to SHRINK_TO
        training scales), or, for a frame smaller than the input, far too small (enlarged up to
        MAX_REFINE_UPSCALE); None to plan as before. The same rule at every frame size, so that a clip seen through
        a stronger objective is planned from the same measure at every magnification (the shipped clip at x4,
        520x520: averaged with the MobileNetV2-UNet's 63 px the image's 88 px planned x0.21 where x1's plan
        implies x0.15, and the H&E Fast-SCNN counted 1.17 times its x1 count; from the image's measure, 1.08)."""
        if classical is None:
            return None
        small = max(h, w) < self.input_size
        size = classical * (1.0 if small else self._squeeze(h, w))  # native (padded) or the whole frame resized
        if size > TOO_BIG * target:
            return Plan(self._bounded(snapped(SHRINK_TO * target / classical), h, w), "classical", classical)
        if small and size * TOO_SMALL < target:
            return Plan(snapped(min(MAX_REFINE_UPSCALE, target / classical)), "classical", classical)
        return None

    def refine(self, plan: Plan, probs: np.ndarray, rgb: np.ndarray) -> Plan | None:
        """After a ``native`` plan ran: a better plan from the nuclei seen in its tiles (the sizer's tiles of the
        same view where there is a sizer), or None to keep it."""
        h, w = rgb.shape[:2]
        post, sizer = self.measure_post, self.sizer
        if sizer is not None:
            probs, post = sizer.policy.view_probs(rgb, plan.scale, sizer.infer), sizer.policy.measure_post
        diameter = nucleus_diameter(postprocess(probs, probs.shape[1:], post)[1])
        if diameter is None:
            return None
        scale = self._bounded(snapped(min(MAX_REFINE_UPSCALE, plan.scale * self.target_diameter(rgb) / diameter)),
                              h, w)
        if abs(scale / plan.scale - 1.0) <= 0.2:
            return None
        better = Plan(scale, "native", diameter / plan.scale)
        self._remember(h, w, better)
        return better

    def _remember(self, h: int, w: int, plan: Plan) -> None:
        if self.cache is not None:
            self.cache[(h, w)] = Plan(plan.scale, plan.source, plan.diameter_px)

    def target_diameter(self, rgb: np.ndarray) -> float:
        """The nucleus diameter (input pixels) the model learnt for this kind of frame: its card's per-image-type
        training scale (fluorescence / brightfield / stained) where it has one, else the overall median."""
        if not self.training_diameters:
            return self.training_diameter
        return self.training_diameters.get(image_type(rgb[::4, ::4]), self.training_diameter)

    # ------------------------------------------------------------------ measuring

    def nucleus_size(self, rgb: np.ndarray, coarse: np.ndarray | None, infer: Infer) -> float | None:
        """Typical nucleus diameter in frame pixels, or None when no view shows enough whole nuclei. ``coarse``: the
        whole frame's probabilities at the input size where the caller has them (run here if None).

        A network measures nuclei well only near the size it learnt, and each view's measurement leans toward
        that size: squeezed 4x, a 40x tissue tile's nuclei merge into blobs about the training size (too big
        in frame pixels); near native scale, nuclei larger than it learnt come apart (too small). So the frame
        is measured in every view from the whole frame at the input size (``coarse``) up to native scale, in
        sqrt(2) steps through the same few windows, and the median of those estimates is the answer. Against
        the earlier whole-frame view plus one refinement in the tiles (MoNuSeg val tiles / 8 train tiles,
        MobileNetV2-UNet INT8): Dice 0.793 -> 0.811 / 0.832 -> 0.844, F1@0.5 0.640 -> 0.670 / 0.684 -> 0.727;
        an H&E Fast-SCNN that stayed at ~0.3x before: val Dice 0.633 -> 0.714.
        """
        squeeze = self._squeeze(*rgb.shape[:2])
        if coarse is None:
            coarse = infer([resize_to(rgb, self.input_size)])[0]
        views = [(squeeze, coarse[None])]
        scale = squeeze * PROBE_STEP
        while scale < 1.0 / PROBE_STEP ** 0.5:
            views.append((scale, None))
            scale *= PROBE_STEP
        views.append((1.0, None))
        estimates = []
        for scale, probs in views:
            if probs is None:
                probs = infer(self._probe_windows(rgb, scale))
            radii = [nucleus_widths(postprocess(p, p.shape[1:], self.measure_post)[1], interior_only=True)
                     for p in probs]
            diameter = typical_diameter(np.concatenate(radii))
            if diameter is not None:
                estimates.append(diameter / scale)
        return float(np.median(estimates)) if estimates else None

    def view_probs(self, rgb: np.ndarray, scale: float, infer: Infer) -> np.ndarray:
        """The probabilities of the frame rescaled by ``scale``, run as overlapping input-size tiles, stitched."""
        size, grid, tiles = scaled_tiles(rgb, scale, self.input_size)
        return stitch(infer(tiles), grid, size, self.input_size, TILE_OVERLAP)

    def _probe_windows(self, rgb: np.ndarray, scale: float) -> list[np.ndarray]:
        """Input-size windows of the frame rescaled by ``scale``, centred on the same PROBE_POINTS."""
        s = self.input_size
        h, w = rgb.shape[:2]
        sh, sw = max(round(h * scale), 1), max(round(w * scale), 1)
        scaled = resize_to(rgb, (sh, sw))
        grid = []
        for fy, fx in PROBE_POINTS:
            corner = (int(np.clip(fy * sh - s / 2, 0, max(sh - s, 0))),
                      int(np.clip(fx * sw - s / 2, 0, max(sw - s, 0))))
            if corner not in grid:
                grid.append(corner)
        return cut_tiles(scaled, grid, s)

    # ------------------------------------------------------------------ scales

    def _tile_scale(self, diameter: float | None, h: int, w: int, target: float,
                    given: bool = False) -> float | None:
        """The frame scale that brings nuclei of ``diameter`` frame pixels to ``target`` input pixels, or None to
        keep the whole-frame resize (nuclei already big enough there, or nothing measured). ``given``: the caller's
        diameter, used as it is and allowed to enlarge the frame up to MAX_UPSCALE (an estimate never enlarges it,
        is snapped, and one of nuclei far too big is shrunk to SHRINK_TO training scales, not to one)."""
        squeeze = self._squeeze(h, w)
        if diameter is None:
            return None if self.tile == "auto" else 1.0  # no evidence to tile; "always": native scale
        too_big = diameter * squeeze > TOO_BIG * target
        if (self.tile == "auto" and max(h, w) >= self.input_size and diameter * squeeze >= MIN_SCALE_FRACTION * target
                and not too_big):
            return None  # nuclei are big enough at the input size, and not too big: keep the resize
        if too_big and not given:  # an estimate of nuclei far too big for the network: shrink them
            return self._bounded(snapped(SHRINK_TO * target / diameter), h, w)
        scale = min(MAX_UPSCALE if given else 1.0, target / diameter)
        if 1.0 / NATIVE_TOLERANCE < scale <= NATIVE_TOLERANCE:
            scale = 1.0  # within the training's scale jitter of native: resampling would only blur
        elif not given:
            scale = snapped(scale)  # an estimate: the same plan whatever small noise it carries
        return self._bounded(scale, h, w)

    def _squeeze(self, h: int, w: int) -> float:
        """Frame -> input pixels (geometric mean of the two axes) when an h x w frame is squeezed to S x S."""
        return (self.input_size / h * self.input_size / w) ** 0.5

    def _bounded(self, scale: float, h: int, w: int) -> float:
        """``scale``, lowered if need be so that an h x w frame gives at most about MAX_TILES tiles (huge frames)."""
        n_tiles = len(tile_grid(max(round(h * scale), 1), max(round(w * scale), 1), self.input_size, TILE_OVERLAP))
        return scale * (MAX_TILES / n_tiles) ** 0.5 if n_tiles > MAX_TILES else scale
