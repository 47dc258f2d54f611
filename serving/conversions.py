"""The dataset's own conversion of a photo or scan into the kind of image the model was trained
on (the ``convert`` option), and ``prepare_image`` (bytes -> model input): decode.decode_image ->
convert_image -> geometry.normalize_uint8. The service, the peers, the tests and the scripts all
call these same functions, which is how "the service answers as the PyTorch eval-mode model" is
proven for real files. Plain NumPy + Pillow (the Bento ships without torch)."""

from __future__ import annotations

import typing as t
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from .decode import DEFAULT_MAX_PIXELS, InputError, decode_image
from .geometry import BACKGROUND, flatten, normalize_uint8, to_8bit, to_model_pixels

# --- the ``convert`` option: its one definition and its one validator ---------------------------
ConvertMode = t.Literal["auto", "dataset", "none"]
CONVERT_MODES: tuple[str, ...] = t.get_args(ConvertMode)
CONVERT_HELP = ("auto: convert a light-background photo or scan the way the model's dataset was "
                "made, leave dataset-like images as they are; dataset: always convert; none: never")


def parse_convert(value: object) -> str:
    """The ``convert`` option as sent (query parameter, form field, argument) -> one of
    CONVERT_MODES (case and surrounding blanks ignored); InputError 400 ``bad_convert`` else."""
    mode = value.strip().lower() if isinstance(value, str) else None
    if mode not in CONVERT_MODES:
        raise InputError(400, "bad_convert",
                         f"convert must be one of {', '.join(CONVERT_MODES)}, got {value!r}")
    return mode


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
# (the pixels of geometry.to_model_pixels). Dataset-form images (dark background) stay on "none", so they
# give exactly the pixels they gave before, bit for bit.

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
    without the ring pixels more than ``outlier`` gray levels off it (an object touching the edge).
    The fit uses the ring only (float64, 2 (H + W) values); the plane is one float32 array built by
    broadcasting a column of row terms against a row of column terms (no index grids)."""
    g = np.asarray(gray)
    v, r, c = _ring(g)
    v = v.astype(np.float64)
    h, w = g.shape
    design = np.stack([np.ones_like(v), r / max(h - 1, 1), c / max(w - 1, 1)], axis=1)
    keep = np.ones(v.shape, dtype=bool)
    coef = np.array([np.median(v), 0.0, 0.0])
    for _ in range(iterations):
        if keep.sum() < 3:
            break
        coef, *_ = np.linalg.lstsq(design[keep], v[keep], rcond=None)
        keep = np.abs(design @ coef - v) <= outlier
    row_terms = (coef[0] + coef[1] * np.arange(h) / max(h - 1, 1)).astype(np.float32)[:, None]
    col_terms = (coef[2] * np.arange(w) / max(w - 1, 1)).astype(np.float32)[None, :]
    plane = row_terms + col_terms
    return np.maximum(plane, np.float32(1.0), out=plane)


def negate(gray: np.ndarray) -> np.ndarray:
    """Light background -> dark background, as Xiao et al.'s "negating the intensities", relative
    to the background's own brightness ``b`` (background_plane): ``(b - v) * 255 / b``, clipped.
    For a white background (b = 255) this is exactly 255 - v; on grey paper or under uneven light
    it also undoes the dimmer light, so the result does not depend on the shade. Float32 (H, W)
    in 0..255, computed in place on two arrays of the image's size."""
    g = np.asarray(gray)
    b = background_plane(g)
    ink = np.subtract(b, g, dtype=np.float32)
    np.divide(np.float32(255.0), b, out=b)
    ink *= b
    return np.clip(ink, 0.0, 255.0, out=ink)


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


# The recipes by the name a model's input_convention gives (the names are serving.contract's
# PIPELINES, which the exporter and the model check accept; a test holds the two equal): the
# MNIST family works on a gray (H, W) array, cifar10 on an RGB image.
GRAY_RECIPES = {"fashion-mnist": fashion_mnist_pipeline, "mnist": mnist_pipeline}
RGB_RECIPES = {"cifar10": cifar10_pipeline}


def alpha_background(img: Image.Image) -> int:
    """The background to composite a transparent image onto before the dataset's conversion:
    white (255) when what is drawn is dark on average (a black icon or drawing on a transparent
    background would vanish on black), else black (BACKGROUND). Opaque images: BACKGROUND."""
    img = to_8bit(img)
    if img.mode not in ("LA", "RGBA"):
        return BACKGROUND
    alpha = np.asarray(img.getchannel("A"), dtype=np.float32)
    if alpha.min() == 255 or alpha.sum() == 0:
        return BACKGROUND
    luma = np.asarray(img.convert("L"), dtype=np.float32)  # the colour channels, alpha dropped
    return 255 if (luma * alpha).sum() / alpha.sum() < 128 else BACKGROUND


def convert_image(img: Image.Image, channels: int, height: int, width: int,
                  convention: dict | None, convert: str = "auto") -> tuple[np.ndarray, str]:
    """Any PIL image -> (uint8 (channels, height, width), converted), where ``converted`` is
    "photo" when the dataset's own conversion was applied and "none" when the image went through
    to_model_pixels unchanged (dataset-form images: bit-identical to before). ``convention`` None
    (a model exported before input_convention existed) means "none". ``convert`` is checked with
    parse_convert (400 for anything else)."""
    convert = parse_convert(convert)
    pipeline = convention.get("pipeline") if convention else None
    if convert == "none" or (pipeline not in GRAY_RECIPES and pipeline not in RGB_RECIPES):
        return to_model_pixels(img, channels, height, width), "none"
    if pipeline in RGB_RECIPES:
        if convert == "auto" and img.size == (width, height):
            return to_model_pixels(img, channels, height, width), "none"
        rgb = RGB_RECIPES[pipeline](flatten(img, "RGB", BACKGROUND), height, width)
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
    gray = np.asarray(flatten(img, "L", alpha_background(img)), dtype=np.uint8)
    if convert == "auto" and not light_background(gray):
        return to_model_pixels(img, channels, height, width), "none"
    px = GRAY_RECIPES[pipeline](gray, height, width)
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
