"""Hard negatives: frames with no nucleus in them, made from the training images themselves.

No labelled live-cell set with textured backgrounds is at hand, so the negatives are built from each training
image's own background: its nuclei and their glow are filled with the background's smooth trend and grain
(:func:`smoothly_filled`), and one of these
is laid over it (:func:`hard_negative`):

* ``plain``: the background as is (stained tissue keeps its cytoplasm and stroma texture);
* ``speckle``: multiplicative speckle with a random grain size, plus read noise (:func:`speckled`);
* ``haze``: a few large, faint, blurred blobs, as out-of-focus nuclei and glare give;
* ``debris``: specks of 1-3 px and thin fibres.

The target of a hard negative is empty: no foreground, no boundary. ``benchmarks/frontier.py`` measures false
counts on frames made another way (:func:`without_nuclei`: Telea inpainting, then a clamp to the background's
grey levels), from the DSB *test* images, which training never sees.
"""

from __future__ import annotations

import cv2
import numpy as np

DILATE_PX = 12  # nuclei masks grown by this before inpainting: DSB fluorescence nuclei glow ~8-10 px beyond them
INPAINT_RADIUS = 5
KINDS = ("plain", "speckle", "haze", "debris")
MAX_HOLE_SHARE = 0.7  # an image whose grown nuclei cover more than this has too little background to fill from


def grown(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` (uint8) dilated by a disc of radius ``px``."""
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1,) * 2))


def nucleus_hole(labels: np.ndarray, dilate_px: int = DILATE_PX) -> np.ndarray:
    """uint8 mask of the nuclei grown by ``dilate_px``: what :func:`without_nuclei` fills."""
    return grown((labels > 0).astype(np.uint8), dilate_px)


def without_nuclei(image: np.ndarray, labels: np.ndarray, dilate_px: int = DILATE_PX) -> np.ndarray:
    """``image`` (uint8 RGB) with its nuclei and their glow (``labels`` grown by ``dilate_px``) inpainted away
    (Telea), the filled pixels held to the interquartile range of the rest of the background, so that no
    nucleus-shaped ghost of what glow is left at the hole's rim remains (float32 RGB)."""
    hole = nucleus_hole(labels, dilate_px)
    bg = cv2.inpaint(np.ascontiguousarray(image), hole, INPAINT_RADIUS, cv2.INPAINT_TELEA).astype(np.float32)
    if (hole == 0).any():
        lo, hi = np.percentile(image[hole == 0], (25, 75), axis=0)
        bg[hole > 0] = np.clip(bg[hole > 0], lo, hi)
    return bg


def smoothly_filled(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                    dilate_px: int = DILATE_PX) -> np.ndarray:
    """``image`` (uint8 RGB) with its nuclei (``labels`` grown by ``dilate_px``) replaced by the background's
    own smooth trend (normalised convolution: a Gaussian blur of the background pixels over a blur of their
    mask, widened until every hole pixel is reached) plus grain of the background's own residual spread
    (float32 RGB). Unlike :func:`without_nuclei`'s clamp to the global interquartile range, the fill follows a
    gradient background, so it leaves no disc-shaped ghost of the nuclei, bright or dark."""
    hole = nucleus_hole(labels, dilate_px) > 0
    img = image.astype(np.float32)
    keep = (~hole).astype(np.float32)
    out = img.copy()
    todo = hole.copy()
    for sigma in (2.0 * dilate_px, 6.0 * dilate_px, 20.0 * dilate_px):
        den = cv2.GaussianBlur(keep, (0, 0), sigma)
        num = cv2.GaussianBlur(img * keep[..., None], (0, 0), sigma)
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok][:, None]
        todo &= ~ok
        if not todo.any():
            break
    out[todo] = np.median(img[~hole], axis=0)
    trend = cv2.GaussianBlur(img, (0, 0), 3.0)
    grain = float(np.std((img - trend)[~hole])) if (~hole).any() else 0.0
    out[hole] += rng.normal(0.0, grain, (int(hole.sum()), 1)).astype(np.float32)
    return out


def as_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def speckled(bg: np.ndarray, rng: np.random.Generator, sigma: float, read_noise: float, grain_px: float = 0.0
             ) -> np.ndarray:
    """``bg`` (float32 HxWx3) times grey speckle ``1 + N(0, sigma)`` (blurred to ``grain_px`` and brought back to
    ``sigma`` when ``grain_px`` > 0) plus read noise ``N(0, read_noise)`` grey levels, uint8."""
    h, w = bg.shape[:2]
    field = rng.normal(0.0, 1.0, (h, w)).astype(np.float32)
    if grain_px > 0:
        field = cv2.GaussianBlur(field, (0, 0), grain_px)
        field /= max(float(field.std()), 1e-6)
    speckle = 1.0 + sigma * field[..., None]
    return as_uint8(bg * speckle + rng.normal(0.0, read_noise, (h, w, 1)))


def _polarity(bg: np.ndarray) -> float:
    """+1 where nuclei would be brighter than this background (dark, fluorescence), -1 where darker (stains)."""
    return 1.0 if float(bg.mean()) < 128 else -1.0


def hazed(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``bg`` with 1-4 faint blurred blobs (sigma 12-40 px, 4-15 % of full scale, towards the nuclei's
    polarity): out-of-focus nuclei and glare."""
    h, w = bg.shape[:2]
    haze = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        blob = np.zeros((h, w), np.float32)
        blob[int(rng.integers(0, h)), int(rng.integers(0, w))] = 1.0
        s = float(rng.uniform(12, 40))
        blob = cv2.GaussianBlur(blob, (0, 0), s)
        haze += blob / max(float(blob.max()), 1e-12) * float(rng.uniform(0.04, 0.15)) * 255
    return as_uint8(bg + _polarity(bg) * haze[..., None])


def with_debris(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``bg`` with 3-15 specks (radius 0-1 px, so 1-3 px across) and 0-3 thin fibres, towards the nuclei's
    polarity and 20-60 % of full scale above the background."""
    out = bg.copy()
    h, w = bg.shape[:2]
    sign = _polarity(bg)
    for _ in range(int(rng.integers(3, 16))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        delta = np.zeros((h, w), np.float32)
        cv2.circle(delta, c, int(rng.integers(0, 2)), 1.0, -1)
        out += sign * float(rng.uniform(0.2, 0.6)) * 255 * delta[..., None]
    for _ in range(int(rng.integers(0, 4))):
        p0 = np.array([rng.integers(0, w), rng.integers(0, h)])
        angle = rng.uniform(0, np.pi)
        p1 = p0 + (rng.uniform(10, 60) * np.array([np.cos(angle), np.sin(angle)])).astype(int)
        delta = np.zeros((h, w), np.float32)
        cv2.line(delta, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1.0, 1, cv2.LINE_AA)
        out += sign * float(rng.uniform(0.2, 0.5)) * 255 * delta[..., None]
    return as_uint8(out)


def hard_negative(bg: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """One hard negative (uint8 RGB) from a nucleus-free background ``bg`` (float32 RGB); ``kind`` one of
    :data:`KINDS`, or None for a random one."""
    kind = kind or KINDS[int(rng.integers(0, len(KINDS)))]
    if kind == "plain":
        return as_uint8(bg)
    if kind == "speckle":
        return speckled(bg, rng, float(rng.uniform(0.03, 0.15)), float(rng.uniform(0.0, 4.0)),
                        float(rng.choice([0.0, rng.uniform(0.5, 2.0)])))
    if kind == "haze":
        return hazed(bg, rng)
    if kind == "debris":
        return with_debris(bg, rng)
    raise ValueError(f"unknown hard-negative kind {kind!r}: choose one of {', '.join(KINDS)}")


class HardNegatives:
    """Nucleus-free backgrounds of a list of (cached set, index) entries, inpainted once each, on first use.

    Entries whose grown nuclei cover more than :data:`MAX_HOLE_SHARE` of the frame give no background
    (:meth:`background` returns None): there is too little left to fill the hole from.
    """

    def __init__(self, dilate_px: int = DILATE_PX):
        self.dilate_px = dilate_px
        self._backgrounds: dict = {}

    def background(self, cached, i: int) -> np.ndarray | None:
        key = (id(cached), i)
        if key not in self._backgrounds:
            image, labels = np.asarray(cached.images[i]), np.asarray(cached.labels[i])
            share = float(nucleus_hole(labels, self.dilate_px).mean())
            rng = np.random.default_rng(i)
            self._backgrounds[key] = (
                smoothly_filled(image, labels, rng, self.dilate_px) if share <= MAX_HOLE_SHARE else None
            )
        return self._backgrounds[key]

    def sample(self, cached, i: int, rng: np.random.Generator):
        """(uint8 image, uint16 empty labels) made from entry ``i``'s background, or None if it has none."""
        bg = self.background(cached, i)
        if bg is None:
            return None
        image = hard_negative(bg, rng)
        return image, np.zeros(image.shape[:2], np.uint16)
