"""Online augmentation with albumentations, applied to the uint8 image and its instance labels together."""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2

AUGMENTATIONS = ("paper", "light", "ours", "none")


def paper_augmentation() -> A.Compose:
    """The paper's: random horizontal and vertical flips, brightness/contrast."""
    return A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5)])


@dataclass(frozen=True)
class Strength:
    """The numbers of our recipe (:func:`our_recipe`): the transforms and their order are fixed, these
    set how far each one goes and how often it fires. ``*_p`` are probabilities."""

    scale: tuple[float, float]  # Affine scale jitter
    rotate: tuple[float, float]  # Affine free rotation, degrees ((0, 0): none)
    affine_p: float
    hue_sat_val: tuple[int, int, int]  # HueSaturationValue shift limits
    rgb_shift: int  # RGBShift limit, every channel
    colour_p: float  # one of HSV shift, RGB shift, channel shuffle
    gray_p: float
    invert_p: float
    brightness_contrast: float  # RandomBrightnessContrast limit, both
    brightness_contrast_p: float
    gamma: tuple[int, int]
    gamma_p: float
    blur: tuple[int, int]  # GaussianBlur kernel sizes
    noise_std: tuple[float, float]  # GaussNoise std range
    degrade_p: float  # one of blur, noise
    jpeg_quality: tuple[int, int]
    jpeg_p: float


#: "ours": built for generalisation to brightfield and stained tissue, and to cheap camera sensors
OURS = Strength(scale=(0.6, 1.6), rotate=(-20, 20), affine_p=0.7, hue_sat_val=(25, 40, 20), rgb_shift=25, colour_p=0.5,
                gray_p=0.15, invert_p=0.15, brightness_contrast=0.3, brightness_contrast_p=0.7, gamma=(70, 150),
                gamma_p=0.3, blur=(3, 5), noise_std=(0.02, 0.08), degrade_p=0.3, jpeg_quality=(40, 95), jpeg_p=0.2)
#: "light": lighter geometry (scale 0.8-1.25, no free rotation) and rarer degradations, for the small networks
LIGHT = Strength(scale=(0.8, 1.25), rotate=(0, 0), affine_p=0.3, hue_sat_val=(20, 30, 15), rgb_shift=20, colour_p=0.4,
                 gray_p=0.1, invert_p=0.1, brightness_contrast=0.2, brightness_contrast_p=0.5, gamma=(80, 125),
                 gamma_p=0.2, blur=(3, 3), noise_std=(0.02, 0.05), degrade_p=0.1, jpeg_quality=(60, 95), jpeg_p=0.1)


def our_recipe(s: Strength) -> A.Compose:
    """Our recipe at strength ``s``: the paper's flips plus 90° rotations, scale (and rotation) jitter,
    stain/colour shifts, grayscale, inversion, brightness/contrast, gamma, blur or noise, JPEG."""
    h, sat, v = s.hue_sat_val
    r = s.rgb_shift
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=s.scale,
                rotate=s.rotate,
                border_mode=cv2.BORDER_REFLECT_101,
                p=s.affine_p,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.OneOf(
                [
                    A.HueSaturationValue(hue_shift_limit=h, sat_shift_limit=sat, val_shift_limit=v),
                    A.RGBShift(r_shift_limit=r, g_shift_limit=r, b_shift_limit=r),
                    A.ChannelShuffle(),
                ],
                p=s.colour_p,
            ),
            A.ToGray(p=s.gray_p),
            A.InvertImg(p=s.invert_p),
            A.RandomBrightnessContrast(
                brightness_limit=s.brightness_contrast, contrast_limit=s.brightness_contrast, p=s.brightness_contrast_p
            ),
            A.RandomGamma(gamma_limit=s.gamma, p=s.gamma_p),
            A.OneOf([A.GaussianBlur(blur_limit=s.blur), A.GaussNoise(std_range=s.noise_std)], p=s.degrade_p),
            A.ImageCompression(quality_range=s.jpeg_quality, p=s.jpeg_p),
        ]
    )


def ours_augmentation(size: int = 256) -> A.Compose:
    """Our recipe: the paper's plus 90° rotations, scale jitter, stain/colour, grayscale, inversion, blur, JPEG.

    Built for generalisation to brightfield and stained tissue, and to cheap camera sensors.
    """
    return our_recipe(OURS)


def light_augmentation(size: int = 256) -> A.Compose:
    """A milder "ours" for the small networks: the same kinds of transform (so stained tissue, brightfield and
    fluorescence are all still covered: colour shifts, grayscale, inversion), lighter geometry (scale 0.8-1.25,
    no free rotation) and rarer degradations. "ours" cost the small networks 1.5-2.5 DSB Dice points.
    """
    return our_recipe(LIGHT)


def build_augmentation(name: str, size: int = 256) -> A.Compose | None:
    if name == "paper":
        return paper_augmentation()
    if name == "light":
        return light_augmentation(size)
    if name == "ours":
        return ours_augmentation(size)
    if name == "none":
        return None
    raise ValueError(f"unknown augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}")
