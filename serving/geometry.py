"""Pixels and sizes, in plain NumPy + Pillow: any decoded image to 8 bits, alpha onto the
background, reduction by an integer factor strip by strip (bounded memory), the letterbox resize
to the model's input (``to_model_pixels``) and the normalisation (``normalize_uint8``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

BACKGROUND = 0  # transparent areas and letterbox bars: black, the background of (Fashion-)MNIST
# Rows handled at once when an image is converted or reduced strip by strip: a strip of a
# 5000-pixel-wide RGBA image is 5000 x 128 x 4 bytes = 2.6 MB.
STRIP_ROWS = 128


def normalize_uint8(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (..., C, H, W) -> float32 ``x * (1 / (255 std)) + (-mean / std)``, with the exact
    float32 operations of ``training.data.Normalizer`` (bit-identical results)."""
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    c = len(mean)
    if pixels.ndim < 3 or pixels.shape[-3] != c:
        raise ValueError(f"expected (..., {c}, H, W) pixels, got shape {pixels.shape}")
    std32 = np.asarray(std, dtype=np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std32)).reshape(c, 1, 1)
    shift = (-np.asarray(mean, dtype=np.float32) / std32).reshape(c, 1, 1)
    return pixels.astype(np.float32) * scale + shift


def to_8bit(img: Image.Image) -> Image.Image:
    """Modes without an 8-bit meaning, to L or RGB(A). 16-bit (I;16*) is scaled 65535 -> 255
    (rounded: ``(v + 128) // 257`` is exactly ``rint(v / 257)``); I (32-bit int) and F (float)
    keep Pillow's own convention (0..255, as ``convert("I")`` and ``convert("F")`` of an L image
    give), clipped. Integer or float32 work on the image's own array: no float64 copy."""
    mode = img.mode
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.uint32)
        a += 128
        a //= 257
        return Image.fromarray(a.astype(np.uint8), "L")
    if mode == "I":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA"):
        return img.convert("RGBA")  # resolves palette transparency into alpha
    if mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return img.convert("RGBA")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def flatten(img: Image.Image, mode: str, background: int = BACKGROUND) -> Image.Image:
    """8-bit ``mode`` ("L" or "RGB") with any alpha composited onto ``background``."""
    img = to_8bit(img)
    if img.mode in ("LA", "RGBA"):
        base = "L" if img.mode == "LA" else "RGB"
        canvas = Image.new(base, img.size, (background,) * len(base))
        canvas.paste(img.convert(base), mask=img.getchannel("A"))
        img = canvas
    return img.convert(mode)


def reduction_factor(size: tuple[int, int], work_side: int | None) -> int:
    """The integer factor that brings the longest side down to [work_side, 2 work_side): 1 for
    an image under 2 work_side (or ``work_side`` None: never reduce)."""
    if not work_side:
        return 1
    return max(1, max(size) // work_side)


def reduce_strips(strips, size: tuple[int, int], factor: int) -> Image.Image:
    """Assemble an image of ``size`` (width, height) reduced by ``factor`` from ``strips``, an
    iterable of (top row, strip image) whose heights are multiples of ``factor`` (the last one
    excepted): each strip goes to 8 bits (to_8bit) and is reduced (Pillow's box average, alpha
    premultiplied) before the next one is read, so only one full-width strip exists at a time.
    Equal to reducing the whole image at once."""
    w, h = size
    out = None
    for top, strip in strips:
        small = to_8bit(strip)
        if factor > 1:
            small = small.reduce(factor)
        if out is None:
            out = Image.new(small.mode, (-(-w // factor), -(-h // factor)))
        out.paste(small, (0, top // factor))
    return out


def strips_of(img: Image.Image, rows: int):
    """(top, crop) of a loaded image, ``rows`` rows at a time."""
    w, h = img.size
    for top in range(0, h, rows):
        yield top, img.crop((0, top, w, min(h, top + rows)))


def strip_rows(factor: int) -> int:
    """Rows per strip: a multiple of ``factor`` near STRIP_ROWS."""
    return factor * max(1, STRIP_ROWS // factor)


def reduce_image(img: Image.Image, factor: int) -> Image.Image:
    """A loaded image in 8 bits (to_8bit) reduced by ``factor``, converted strip by strip (a
    palette image never exists as full-size RGBA)."""
    if factor <= 1:
        return to_8bit(img)
    return reduce_strips(strips_of(img, strip_rows(factor)), img.size, factor)


def to_model_pixels(img: Image.Image, channels: int, height: int, width: int) -> np.ndarray:
    """Any PIL image -> uint8 (channels, height, width), as the model's dataset stores images.

    - alpha (RGBA, LA, P with transparency) is composited onto black, the (Fashion-)MNIST
      background; then ``convert("L")`` (ITU-R 601-2 luma) for 1 channel, ``"RGB"`` for 3;
    - a non-square image is padded to a square with black, centred (Fashion-MNIST's own
      recipe: longest side fitted, then extended to a square), then resized with Pillow's
      BILINEAR filter; an image already at (width, height) is not resampled.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    img = flatten(img, "L" if channels == 1 else "RGB", BACKGROUND)
    w, h = img.size
    if (w, h) != (width, height) and w * height != h * width:  # aspect differs: letterbox
        side_w, side_h = (w, w * height // width) if w * height > h * width else (h * width // height, h)
        padded = Image.new(img.mode, (side_w, side_h), (BACKGROUND,) * channels if channels > 1 else BACKGROUND)
        padded.paste(img, ((side_w - w) // 2, (side_h - h) // 2))
        img = padded
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return np.ascontiguousarray(a)
