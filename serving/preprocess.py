"""Image preprocessing for the service, in plain NumPy + Pillow (no torch: the Bento ships
without it). Tests import these same functions to feed PyTorch, which is how "the service
answers as the PyTorch eval-mode model" is proven for real files."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


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


# --- from an image file to model pixels -----------------------------------------------------------
# decode_image (bytes -> PIL image, every check of untrusted input) -> to_model_pixels (any mode,
# any size -> uint8 (C, H, W) as the model's dataset stores it) -> normalize_uint8. The service,
# the tests that compare it with PyTorch and scripts/http_accuracy.py all call these same three.

# Formats we decode. Restricting Pillow's plugins keeps files that need external programs (EPS
# needs Ghostscript) or that have no magic number (TGA: random bytes may "identify" as TGA) out.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
DEFAULT_MAX_PIXELS = 25_000_000  # width * height of the first frame; ~75 MB decoded as RGB
BACKGROUND = 0  # transparent areas and letterbox bars: black, the background of (Fashion-)MNIST


class InputError(ValueError):
    """Bad client input. ``status`` is the HTTP status the service answers with (4xx), ``error``
    a short stable code, ``detail`` what was wrong and what to send instead."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.status, self.error, self.detail = status, error, detail

    def to_json(self) -> dict:
        return {"error": self.error, "detail": self.detail}


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode untrusted bytes into a fully loaded, EXIF-upright PIL image (first frame only).

    Raises InputError: 400 empty, 415 not an image in ALLOWED_FORMATS, 413 more than
    ``max_pixels`` pixels (checked from the header, before decoding: decompression bombs),
    422 truncated or corrupt."""
    if not data:
        raise InputError(400, "empty_image", "the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise _too_many_pixels(None, max_pixels) from e
    except UnidentifiedImageError as e:
        raise InputError(415, "unsupported_image",
                         "not an image in a supported format (" + ", ".join(ALLOWED_FORMATS)
                         + f"); got {len(data)} bytes starting with {data[:8]!r}") from e
    except Exception as e:  # noqa: BLE001 - a plugin choking on a corrupt header
        raise InputError(422, "corrupt_image", f"cannot read the image header: {e}") from e
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError(422, "corrupt_image", f"image has size {width}x{height}")
    if width * height > max_pixels:
        raise _too_many_pixels(img, max_pixels)
    fmt = img.format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit rules
            img.load()
    except Image.DecompressionBombError as e:
        raise _too_many_pixels(img, max_pixels) from e
    except Exception as e:  # noqa: BLE001 - truncated data: OSError, SyntaxError, zlib, ...
        raise InputError(422, "corrupt_image",
                         f"the {fmt} image is truncated or corrupt: {e}") from e
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001, S110 - malformed EXIF: keep the pixels as stored
        pass
    return img


def _too_many_pixels(img: Image.Image | None, max_pixels: int) -> InputError:
    size = (f"{img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]} pixels" if img
            else "beyond Pillow's decompression-bomb limit")
    return InputError(413, "too_many_pixels",
                      f"image is {size}; the limit is {max_pixels} pixels (BNSERVE_MAX_PIXELS)")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Modes without an 8-bit meaning, to L or RGB(A). 16-bit (I;16*) is scaled 65535 -> 255;
    I (32-bit int) and F (float) keep Pillow's own convention (0..255, as ``convert("I")`` and
    ``convert("F")`` of an L image give), clipped."""
    mode = img.mode
    if mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA"):
        return img.convert("RGBA")  # resolves palette transparency into alpha
    if mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return img.convert("RGBA")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


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
    img = _to_8bit(img)
    if img.mode in ("LA", "RGBA"):
        base = "L" if img.mode == "LA" else "RGB"
        background = Image.new(base, img.size, (BACKGROUND,) * len(base))
        background.paste(img.convert(base), mask=img.getchannel("A"))
        img = background
    img = img.convert("L" if channels == 1 else "RGB")
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


def prepare_image(data: bytes, channels: int, height: int, width: int, mean: Sequence[float],
                  std: Sequence[float], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> float32 (C, H, W) model input: decode_image, to_model_pixels,
    normalize_uint8."""
    img = decode_image(data, max_pixels)
    return normalize_uint8(to_model_pixels(img, channels, height, width), mean, std)
