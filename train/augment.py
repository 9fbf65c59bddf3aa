"""Online augmentation with albumentations, applied to the uint8 image and its instance labels together."""

from __future__ import annotations

import albumentations as A
import cv2

AUGMENTATIONS = ("paper", "light", "ours", "none")


def paper_augmentation() -> A.Compose:
    """The paper's: random horizontal and vertical flips, brightness/contrast."""
    return A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5)])


def ours_augmentation(size: int = 256) -> A.Compose:
    """Our recipe: the paper's plus 90° rotations, scale jitter, stain/colour, grayscale, inversion, blur, JPEG.

    Built for generalisation to brightfield and stained tissue, and to cheap camera sensors.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=(0.6, 1.6),
                rotate=(-20, 20),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.OneOf(
                [
                    A.HueSaturationValue(hue_shift_limit=25, sat_shift_limit=40, val_shift_limit=20),
                    A.RGBShift(r_shift_limit=25, g_shift_limit=25, b_shift_limit=25),
                    A.ChannelShuffle(),
                ],
                p=0.5,
            ),
            A.ToGray(p=0.15),
            A.InvertImg(p=0.15),
            A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.7),
            A.RandomGamma(gamma_limit=(70, 150), p=0.3),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3),
            A.ImageCompression(quality_range=(40, 95), p=0.2),
        ]
    )


def light_augmentation(size: int = 256) -> A.Compose:
    """A milder "ours" for the small networks: the same kinds of transform (so stained tissue, brightfield and
    fluorescence are all still covered: colour shifts, grayscale, inversion), lighter geometry (scale 0.8-1.25,
    no free rotation) and rarer degradations. "ours" cost the small networks 1.5-2.5 DSB Dice points.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=(0.8, 1.25),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.3,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.OneOf(
                [
                    A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=15),
                    A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20),
                    A.ChannelShuffle(),
                ],
                p=0.4,
            ),
            A.ToGray(p=0.1),
            A.InvertImg(p=0.1),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.RandomGamma(gamma_limit=(80, 125), p=0.2),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 3)), A.GaussNoise(std_range=(0.02, 0.05))], p=0.1),
            A.ImageCompression(quality_range=(60, 95), p=0.1),
        ]
    )


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
