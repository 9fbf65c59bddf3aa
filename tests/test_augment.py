"""The "ours" and "light" recipes: one pipeline (our_recipe) at two strengths, with the numbers they always had."""

from __future__ import annotations

import pytest

pytest.importorskip("albumentations")

from edgeseg.train.augment import LIGHT, OURS, build_augmentation, our_recipe  # noqa: E402

#: (transform, argument) -> (ours, light), as albumentations normalises them; every other argument is shared
DIFFERENCES = {
    ("Affine", "p"): (0.7, 0.3),
    ("Affine", "rotate"): ((-20.0, 20.0), (0.0, 0.0)),
    ("Affine", "scale"): ({"x": (0.6, 1.6), "y": (0.6, 1.6)}, {"x": (0.8, 1.25), "y": (0.8, 1.25)}),
    ("OneOf:colour", "p"): (0.5, 0.4),
    ("HueSaturationValue", "hue_shift_limit"): ((-25.0, 25.0), (-20.0, 20.0)),
    ("HueSaturationValue", "sat_shift_limit"): ((-40.0, 40.0), (-30.0, 30.0)),
    ("HueSaturationValue", "val_shift_limit"): ((-20.0, 20.0), (-15.0, 15.0)),
    ("RGBShift", "r_shift_limit"): ((-25.0, 25.0), (-20.0, 20.0)),
    ("RGBShift", "g_shift_limit"): ((-25.0, 25.0), (-20.0, 20.0)),
    ("RGBShift", "b_shift_limit"): ((-25.0, 25.0), (-20.0, 20.0)),
    ("RGBShift", "noise_params"): None,  # derived from the shift limits
    ("ToGray", "p"): (0.15, 0.1),
    ("InvertImg", "p"): (0.15, 0.1),
    ("RandomBrightnessContrast", "brightness_limit"): ((-0.3, 0.3), (-0.2, 0.2)),
    ("RandomBrightnessContrast", "contrast_limit"): ((-0.3, 0.3), (-0.2, 0.2)),
    ("RandomBrightnessContrast", "p"): (0.7, 0.5),
    ("RandomGamma", "gamma_limit"): ((70.0, 150.0), (80.0, 125.0)),
    ("RandomGamma", "p"): (0.3, 0.2),
    ("OneOf:degrade", "p"): (0.3, 0.1),
    ("GaussianBlur", "blur_limit"): ((3, 5), (3, 3)),
    ("GaussNoise", "std_range"): ((0.02, 0.08), (0.02, 0.05)),
    ("ImageCompression", "quality_range"): ((40, 95), (60, 95)),
    ("ImageCompression", "p"): (0.2, 0.1),
}


def _args(compose) -> list[tuple[str, dict]]:
    """(name, init arguments with p) of every transform in order; a OneOf is named after its first child."""
    out = []
    for t in compose.transforms:
        if hasattr(t, "transforms"):
            kind = "colour" if type(t.transforms[0]).__name__ == "HueSaturationValue" else "degrade"
            out += [(f"OneOf:{kind}", {"p": t.p}), *_args(t)]
        else:
            out.append((type(t).__name__, {**t.get_transform_init_args(), "p": t.p}))
    return out


def test_named_recipes_are_our_recipe_at_two_strengths():
    assert repr(build_augmentation("ours")) == repr(our_recipe(OURS))
    assert repr(build_augmentation("light")) == repr(our_recipe(LIGHT))
    assert build_augmentation("none") is None


def test_ours_and_light_differ_only_in_their_numbers():
    ours, light = _args(build_augmentation("ours")), _args(build_augmentation("light"))
    assert [n for n, _ in ours] == [n for n, _ in light]  # same transforms, same order
    found = {}
    for (name, a), (_, b) in zip(ours, light, strict=True):
        assert a.keys() == b.keys()
        found.update({(name, k): (a[k], b[k]) for k in a if a[k] != b[k]})
    assert found.keys() == DIFFERENCES.keys()
    for key, expected in DIFFERENCES.items():
        if expected is not None:
            assert found[key] == expected, key


def test_paper_recipe():
    assert [n for n, _ in _args(build_augmentation("paper"))] == [
        "HorizontalFlip", "VerticalFlip", "RandomBrightnessContrast"]
