"""Image preprocessing for the service, in plain NumPy + Pillow (no torch: the Bento ships
without it). Tests import these same functions to feed PyTorch, which is how "the service
answers as the PyTorch eval-mode model" is proven for real files."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError


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
    img = _flatten(img, "L" if channels == 1 else "RGB", BACKGROUND)
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


# --- the dataset's own conversion for photos and scans --------------------------------------------
# The metadata's ``input_convention`` (docs/ARTIFACTS.md) names how the training images were made.
# A light-background photo or scan is turned into what those images looked like:
#   fashion-mnist (Xiao, Rasul, Vollgraf 2017, Sec. 2): trim the edges close to the background,
#     negate, fit the longest edge to 28, sharpen, extend the shorter edge to 28, centred;
#   mnist (LeCun et al.): negate, trim, fit into a 20x20 box (aspect kept, anti-aliased), place
#     in 28x28 with the centre of mass at the centre;
#   cifar10: natural photos, a plain resize of the centre crop (nothing to trim or negate).
# ``convert``: "auto" converts when the image looks like a photo (light_background for the MNIST
# family; any size other than the model's for cifar10), "dataset" always converts, "none" never
# (the pixels of to_model_pixels). Dataset-form images (dark background) stay on "none", so they
# give exactly the pixels they gave before, bit for bit.

CONVERT_MODES: tuple[str, ...] = ("auto", "dataset", "none")
# Mean of the outermost ring of pixels at or above which the background counts as light. The
# highest ring mean over all 70,000 Fashion-MNIST images is 107.5 (MNIST: 8.6), so no dataset
# image is ever converted; a photo on paper or a white studio background is well above it.
LIGHT_BORDER = 128.0
# Xiao et al.: "trimming edges that are close to the color of the corner pixels ... within 5% of
# the maximum possible intensity in RGB space".
TRIM_FRACTION = 0.05
MNIST_BOX = 20  # LeCun: each digit size-normalised into a 20x20 box
# MNIST's mean centre of mass, in pixel-index coordinates (measured on the 60,000 training images:
# 14.00 +- 0.29 for both rows and columns)
MNIST_CENTRE = 14.0


def border_mean(gray: np.ndarray) -> float:
    """Mean of the outermost one-pixel ring of a 2-D image."""
    g = np.asarray(gray)
    h, w = g.shape
    if h < 3 or w < 3:
        return float(g.mean())
    ring = int(g.sum(dtype=np.int64)) - int(g[1:-1, 1:-1].sum(dtype=np.int64)) if g.dtype == np.uint8 else (
        float(g.sum(dtype=np.float64)) - float(g[1:-1, 1:-1].sum(dtype=np.float64)))
    return ring / (2 * w + 2 * (h - 2))


def light_background(gray: np.ndarray) -> bool:
    """True for a light-background photo or scan: the border's mean is at least LIGHT_BORDER."""
    return border_mean(gray) >= LIGHT_BORDER


def _ring(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, rows, columns) of the outermost one-pixel ring of a 2-D array."""
    h, w = a.shape
    if h < 3 or w < 3:
        rows, cols = np.indices(a.shape)
        return a.ravel(), rows.ravel(), cols.ravel()
    rows = np.concatenate([np.zeros(w, int), np.full(w, h - 1), np.arange(1, h - 1), np.arange(1, h - 1)])
    cols = np.concatenate([np.arange(w), np.arange(w), np.zeros(h - 2, int), np.full(h - 2, w - 1)])
    return a[rows, cols], rows, cols


def background_plane(gray: np.ndarray, iterations: int = 3, outlier: float = 20.0) -> np.ndarray:
    """The background's brightness at every pixel, float32 (H, W): a plane a + b row + c column
    fitted to the border ring by least squares (light falls off across a photo or a scan), refitted
    without the ring pixels more than ``outlier`` gray levels off it (an object touching the edge)."""
    g = np.asarray(gray, dtype=np.float64)
    v, r, c = _ring(g)
    h, w = g.shape
    design = np.stack([np.ones_like(v), r / max(h - 1, 1), c / max(w - 1, 1)], axis=1)
    keep = np.ones(v.shape, dtype=bool)
    coef = np.array([np.median(v), 0.0, 0.0])
    for _ in range(iterations):
        if keep.sum() < 3:
            break
        coef, *_ = np.linalg.lstsq(design[keep], v[keep], rcond=None)
        keep = np.abs(design @ coef - v) <= outlier
    rows, cols = np.indices(g.shape, dtype=np.float64)
    plane = coef[0] + coef[1] * rows / max(h - 1, 1) + coef[2] * cols / max(w - 1, 1)
    return np.maximum(plane, 1.0).astype(np.float32)


def negate(gray: np.ndarray) -> np.ndarray:
    """Light background -> dark background, as Xiao et al.'s "negating the intensities", relative
    to the background's own brightness ``b`` (background_plane): ``(b - v) * 255 / b``, clipped.
    For a white background (b = 255) this is exactly 255 - v; on grey paper or under uneven light
    it also undoes the dimmer light, so the result does not depend on the shade. Float32 (H, W)
    in 0..255."""
    g = np.asarray(gray, dtype=np.float32)
    b = background_plane(g)
    return np.clip((b - g) * (np.float32(255.0) / b), 0.0, 255.0)


def trim_box(ink: np.ndarray, fraction: float = TRIM_FRACTION) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive: the smallest box holding every pixel
    whose ink is above ``fraction`` of 255 (Xiao et al.'s trim: edges within 5% of the
    background's intensity go), looked at through a small box blur so that sensor noise and JPEG
    speckles far from the object do not count. The whole image when nothing is above it."""
    a = np.asarray(ink, dtype=np.float32)
    mask = a > fraction * 255.0
    radius = max(1, max(a.shape) // 200)
    if max(a.shape) > 28:  # a pixel counts when its neighbourhood is inked too (blurring alone would widen the box)
        blurred = Image.fromarray(to_uint8(a), "L").filter(ImageFilter.BoxBlur(radius))
        mask &= np.asarray(blurred, dtype=np.float32) > fraction * 255.0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, mask.shape[0], 0, mask.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit_longest(ink: np.ndarray, side: int) -> np.ndarray:
    """Resize a float (H, W) image so its longest edge is ``side``, aspect kept (the shorter edge
    at least 1), with Pillow's anti-aliased bicubic filter. Float32 in 0..255."""
    h, w = ink.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(np.ascontiguousarray(ink, dtype=np.float32), "F")
    return np.clip(np.asarray(img.resize(size, Image.BICUBIC), dtype=np.float32), 0.0, 255.0)


def gaussian_blur(a: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Separable Gaussian blur of a float (H, W) image (kernel radius 2 sigma, zero padding: the
    background beyond the edge is black)."""
    r = max(1, int(round(2 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    p = np.pad(np.asarray(a, dtype=np.float32), r)
    h, w = a.shape
    rows = sum(k[i] * p[:, i:i + w] for i in range(2 * r + 1))  # (H + 2r, W)
    return sum(k[i] * rows[i:i + h, :] for i in range(2 * r + 1))


def sharpen(ink: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """Xiao et al.'s "sharpening pixels using a Gaussian operator of the radius and standard
    deviation of 1.0": an unsharp mask, x + amount (x - gaussian(x, sigma 1)). Float32 in 0..255."""
    ink = np.asarray(ink, dtype=np.float32)
    return np.clip(ink + np.float32(amount) * (ink - gaussian_blur(ink, 1.0)), 0.0, 255.0)


def pad_centred(ink: np.ndarray, height: int, width: int) -> np.ndarray:
    """Extend a float (h, w) image with zeros to (height, width), centred (odd spare pixel at
    the bottom/right)."""
    h, w = ink.shape
    out = np.zeros((height, width), dtype=np.float32)
    top, left = (height - h) // 2, (width - w) // 2
    out[top:top + h, left:left + w] = ink
    return out


def centre_of_mass(ink: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre, in pixel-index coordinates; the
    geometric centre for an empty image."""
    a = np.asarray(ink, dtype=np.float64)
    total = a.sum()
    if total <= 0:
        return (a.shape[0] - 1) / 2, (a.shape[1] - 1) / 2
    rows, cols = np.indices(a.shape)
    return float((a * rows).sum() / total), float((a * cols).sum() / total)


def place_by_mass(ink: np.ndarray, height: int, width: int, centre: float = MNIST_CENTRE) -> np.ndarray:
    """Paste a float (h, w) image into a (height, width) zero canvas so that its centre of mass
    lands on (centre, centre), rounded to whole pixels (LeCun's MNIST); what falls outside is
    cut off."""
    cy, cx = centre_of_mass(ink)
    top, left = int(round(centre - cy)), int(round(centre - cx))
    out = np.zeros((height, width), dtype=np.float32)
    h, w = ink.shape
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(height, top + h), min(width, left + w)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = ink[r0 - top:r1 - top, c0 - left:c1 - left]
    return out


def stretch(ink: np.ndarray) -> np.ndarray:
    """Scale so the brightest pixel is 255: every one of the 70,000 Fashion-MNIST and the 70,000
    MNIST images has its brightest pixel at 250 or above, whatever the ink or garment colour."""
    a = np.asarray(ink, dtype=np.float32)
    top = float(a.max(initial=0.0))
    return a * np.float32(255.0 / top) if top > 0 else a


def to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def fashion_mnist_pipeline(gray: np.ndarray, height: int = 28, width: int = 28) -> np.ndarray:
    """A light-background photo (uint8 or float (H, W) gray) -> uint8 (height, width), the
    Fashion-MNIST way: negate, trim, fit the longest edge, sharpen, extend to the canvas, centred,
    stretch."""
    ink = negate(gray)
    top, bottom, left, right = trim_box(ink)
    ink = fit_longest(ink[top:bottom, left:right], min(height, width))
    return to_uint8(stretch(pad_centred(sharpen(ink), height, width)))


def mnist_pipeline(gray: np.ndarray, height: int = 28, width: int = 28, box: int = MNIST_BOX) -> np.ndarray:
    """A dark-ink-on-paper scan (uint8 or float (H, W) gray) -> uint8 (height, width), the MNIST
    way: negate, trim, fit into a box x box square (aspect kept), centre of mass at the centre,
    stretch."""
    ink = negate(gray)
    top, bottom, left, right = trim_box(ink)
    ink = fit_longest(ink[top:bottom, left:right], box)
    return to_uint8(stretch(place_by_mass(ink, height, width, centre=MNIST_CENTRE * min(height, width) / 28)))


def cifar10_pipeline(img: Image.Image, height: int = 32, width: int = 32) -> np.ndarray:
    """A natural RGB photo -> uint8 (height, width, 3): the centre crop with the model's aspect,
    resized with Pillow's anti-aliased bicubic filter (no letterbox bars)."""
    img = img.convert("RGB")
    w, h = img.size
    if w * height > h * width:  # too wide
        cw, ch = max(1, h * width // height), h
    else:
        cw, ch = w, max(1, w * height // width)
    left, top = (w - cw) // 2, (h - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img.resize((width, height), Image.BICUBIC), dtype=np.uint8)


def _flatten(img: Image.Image, mode: str, background: int) -> Image.Image:
    """8-bit ``mode`` ("L" or "RGB") with any alpha composited onto ``background``."""
    img = _to_8bit(img)
    if img.mode in ("LA", "RGBA"):
        base = "L" if img.mode == "LA" else "RGB"
        canvas = Image.new(base, img.size, (background,) * len(base))
        canvas.paste(img.convert(base), mask=img.getchannel("A"))
        img = canvas
    return img.convert(mode)


def alpha_background(img: Image.Image) -> int:
    """The background to composite a transparent image onto before the dataset's conversion:
    white (255) when what is drawn is dark on average (a black icon or drawing on a transparent
    background would vanish on black), else black (BACKGROUND). Opaque images: BACKGROUND."""
    img = _to_8bit(img)
    if img.mode not in ("LA", "RGBA"):
        return BACKGROUND
    alpha = np.asarray(img.getchannel("A"), dtype=np.float64)
    if alpha.min() == 255 or alpha.sum() == 0:
        return BACKGROUND
    luma = np.asarray(img.convert("L"), dtype=np.float64)  # the colour channels, alpha dropped
    return 255 if (luma * alpha).sum() / alpha.sum() < 128 else BACKGROUND


def convert_image(img: Image.Image, channels: int, height: int, width: int,
                  convention: dict | None, convert: str = "auto") -> tuple[np.ndarray, str]:
    """Any PIL image -> (uint8 (channels, height, width), converted), where ``converted`` is
    "photo" when the dataset's own conversion was applied and "none" when the image went through
    to_model_pixels unchanged (dataset-form images: bit-identical to before). ``convention`` None
    (a model exported before input_convention existed) means "none"."""
    if convert not in CONVERT_MODES:
        raise InputError(400, "bad_convert",
                         f"convert must be one of {', '.join(CONVERT_MODES)}, got {convert!r}")
    pipeline = convention.get("pipeline") if convention else None
    if convert == "none" or pipeline is None:
        return to_model_pixels(img, channels, height, width), "none"
    if pipeline == "cifar10":
        if convert == "auto" and img.size == (width, height):
            return to_model_pixels(img, channels, height, width), "none"
        rgb = cifar10_pipeline(_flatten(img, "RGB", BACKGROUND), height, width)
        px = rgb.transpose(2, 0, 1) if channels == 3 else np.asarray(
            Image.fromarray(rgb, "RGB").convert("L"), dtype=np.uint8)[None]
        return np.ascontiguousarray(px), "photo"
    # the MNIST family: gray, alpha onto black as in to_model_pixels (so the decision and the
    # "none" pixels see the same image)
    if convert == "auto" and img.size == (width, height) and channels == 1:
        # at the model's size to_model_pixels neither pads nor resamples: its output is the image
        # the decision looks at, and the "none" answer (dataset images take this path)
        px = to_model_pixels(img, channels, height, width)
        if not light_background(px[0]):
            return px, "none"
    gray = np.asarray(_flatten(img, "L", alpha_background(img)), dtype=np.uint8)
    if convert == "auto" and not light_background(gray):
        return to_model_pixels(img, channels, height, width), "none"
    px = (fashion_mnist_pipeline if pipeline == "fashion-mnist" else mnist_pipeline)(gray, height, width)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(px[None], 3, axis=0)), "photo"
    return px[None], "photo"


def prepare_image(data: bytes, channels: int, height: int, width: int, mean: Sequence[float],
                  std: Sequence[float], max_pixels: int = DEFAULT_MAX_PIXELS,
                  convention: dict | None = None, convert: str = "auto") -> np.ndarray:
    """Image file bytes -> float32 (C, H, W) model input: decode_image, convert_image (with no
    ``convention``: to_model_pixels), normalize_uint8."""
    img = decode_image(data, max_pixels)
    px, _ = convert_image(img, channels, height, width, convention, convert)
    return normalize_uint8(px, mean, std)
