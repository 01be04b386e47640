"""Image files to the batch's pixels: any format and mode PIL reads, any size, to [3, S, S] float in [0, 1].

Evaluation sees the whole picture the way CLIP's preprocessing shows it: the shorter side resized to S, then the
centre S x S. Training with `data.augment=true` sees a random resized crop instead (a random 50-100% of the area at
an aspect ratio in [3/4, 4/3], resized to S), which a few thousand real pairs need far more than the synthetic
worlds do. An image already S x S is not resampled at all, so a lossless PNG written by nanovlm.export loads back
pixel for pixel.

This runs in the DataLoader's worker processes (`data.num_workers`): decoding and resizing are the expensive part of
a disk batch, and the transform is a small picklable object for that reason.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

# Decompression bombs are an attack on servers, not a concern for a training set someone chose; a 20k x 20k
# scan should load, not raise PIL's DecompressionBombError.
Image.MAX_IMAGE_PIXELS = None


class BadImage(ValueError):
    """An image file that cannot be decoded: missing, truncated, not an image."""


def open_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode a file path or the file's bytes to an RGB image. Palette, greyscale, CMYK, 16-bit and alpha images
    are converted (alpha is dropped: the pixels are kept as drawn, not composited); anything PIL cannot read fully
    is a BadImage naming why."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()  # decode now: a truncated file fails here, not later in a worker's resize
            if image.mode == "I;16" or image.mode == "I":  # 16/32-bit greyscale: scale to 8 bits before RGB
                image = image.point(lambda v: v / 256).convert("L")
            return image.convert("RGB")
    except FileNotFoundError:
        raise BadImage("missing (no such file)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImage(f"truncated or corrupt ({error})") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image [H, W] -> [3, H, W] float in [0, 1]."""
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return pixels.permute(2, 0, 1).float().div(255)


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of the image, as a PIL box (left, top, right, bottom)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def random_box(width: int, height: int) -> tuple[int, int, int, int]:
    """A random crop box covering 50-100% of the area at aspect ratio 3/4..4/3 (torchvision's RandomResizedCrop,
    with a smaller area range: at 32 px a 8% crop would leave nothing to match a caption to).

    Drawn from torch's generator, which the DataLoader seeds differently in each worker (and `seed` seeds in the
    main process), so a run's crops are reproducible and workers do not repeat each other's."""
    area = width * height
    for _ in range(10):
        target = area * _uniform(0.5, 1.0)
        ratio = math.exp(_uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, ()))
            top = int(torch.randint(0, height - h + 1, ()))
            return left, top, left + w, top + h
    return centre_box(width, height)


class ImageTransform:
    """Decoded image -> [3, size, size] in [0, 1]: centre crop, or a random resized crop when `augment` is set
    (training only; the datamodule builds a second, plain one for validation and the gallery)."""

    def __init__(self, size: int, augment: bool = False) -> None:
        self.size, self.augment = size, augment

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        box = random_box(width, height) if self.augment else centre_box(width, height)
        if box == (0, 0, self.size, self.size) and (width, height) == (self.size, self.size):
            return to_tensor(image)  # already the right square: no resampling, pixels stay exact
        # Bicubic from the box; reducing_gap first shrinks by whole factors (fast and alias-free for big photos).
        resized = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
        return to_tensor(resized)
