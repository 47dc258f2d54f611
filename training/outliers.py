"""Outlier exposure (Hendrycks, Mazeika & Dietterich 2019, "Deep Anomaly Detection with Outlier
Exposure"): images that are none of the classes, for a second loss term that pulls the model's
answer on them towards the uniform distribution (training/loop.py, ``uniform_cross_entropy``),
and the measures of how well a score then separates held-out classes from held-out outliers.

The outliers are drawn here, reproducibly from a seed, in the dataset's form (light on black,
28 x 28, uint8, brightest pixel 255): rendered text (the DejaVu / Liberation fonts under
FONT_DIR when present, else PIL's default font), scribbles and random strokes, geometric shapes
(rings, faces, stars, triangles, crosses, arrows, crescents), blobs and noise textures. For a
digit dataset no single characters, plain rings or lone strokes are drawn (they are digits).
The other dataset of the same form (MNIST digits for the Fashion-MNIST model and the reverse)
is added by the trainer when it is on disk (``OTHER_DATASET``); it is never required.
Nothing here reads the real-image evaluation set (scripts/real_images.py).

The same seed gives the same images on machines with the same fonts and Pillow.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 28  # the datasets' side (Fashion-MNIST and MNIST)
CANVAS = 84  # drawn at 3x, then reduced: anti-aliased strokes like the datasets'
FONT_DIR = Path("/usr/share/fonts/truetype")
# The dataset whose images are outliers of a model (same form, other classes).
OTHER_DATASET = {"fashion-mnist": "mnist", "mnist": "fashion-mnist"}
DIGIT_DATASETS = ("mnist",)  # whose classes are digits: no single characters among their outliers
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
SYMBOLS = "@#&%?!$*+="
# (kind, weight) of the synthetic outliers
KINDS = (("text", 0.3), ("scribble", 0.2), ("shape", 0.25), ("blob", 0.1), ("texture", 0.15))


@functools.cache
def font_paths(font_dir: Path = FONT_DIR) -> tuple[Path, ...]:
    """The TrueType fonts of ``font_dir`` (sorted: the same draws on every machine with them)."""
    return tuple(sorted(font_dir.rglob("*.ttf"))) if font_dir.is_dir() else ()


@functools.cache
def _font(path: Path | None, size: int):
    if path is None:
        try:
            return ImageFont.load_default(size)
        except TypeError:  # Pillow < 10.1: one bitmap size
            return ImageFont.load_default()
    return ImageFont.truetype(str(path), size)


def text_image(rng: np.random.Generator, digits_are_classes: bool = False) -> Image.Image:
    """A word, a few letters or symbols, or (when digits are no class) numbers, white on black.
    For a digit dataset at least two characters, and no digits."""
    alphabet = LETTERS + SYMBOLS + ("" if digits_are_classes else DIGITS)
    lo = 2 if digits_are_classes else 1
    n = int(rng.integers(lo, 6))
    s = "".join(rng.choice(list(alphabet), n))
    fonts = font_paths()
    font = _font(fonts[int(rng.integers(len(fonts)))] if fonts else None, int(rng.integers(28, 64)))
    img = Image.new("L", (CANVAS * 3, CANVAS), 0)
    ImageDraw.Draw(img).text((4, 4), s, fill=255, font=font)
    if rng.random() < 0.5:
        img = img.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR, expand=True)
    return img


def _points(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    return [tuple(p) for p in rng.uniform(0.1 * CANVAS, 0.9 * CANVAS, (n, 2))]


def scribble_image(rng: np.random.Generator, digits_are_classes: bool = False) -> Image.Image:
    """Random strokes: smooth random walks and straight lines, 2..8 px wide at 3x. For a digit
    dataset at least three strokes (one or two could be a digit)."""
    img = Image.new("L", (CANVAS, CANVAS), 0)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3 if digits_are_classes else 1, 6))):
        width = int(rng.integers(2, 9))
        if rng.random() < 0.6:  # a smooth random walk
            steps = int(rng.integers(6, 20))
            angle = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.5, steps))
            xy = np.cumsum(np.stack([np.cos(angle), np.sin(angle)], 1) * rng.uniform(3, 8), 0)
            xy = xy - xy.mean(0) + rng.uniform(0.3 * CANVAS, 0.7 * CANVAS, 2)
            d.line([tuple(p) for p in xy], fill=int(rng.integers(150, 256)), width=width, joint="curve")
        else:
            d.line(_points(rng, 2), fill=int(rng.integers(150, 256)), width=width)
    return img


def _star(cx: float, cy: float, r_out: float, r_in: float, n: int, phase: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * n):
        r = r_out if i % 2 == 0 else r_in
        a = phase + math.pi * i / n
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def shape_image(rng: np.random.Generator, digits_are_classes: bool = False) -> Image.Image:
    """One or two geometric shapes, filled or outlined: a face, a star, a triangle, a cross, an
    arrow, a crescent, or (not for digit datasets: a zero) a ring or disc."""
    kinds = ["face", "star", "triangle", "cross", "arrow", "crescent"] + ([] if digits_are_classes else ["ring"])
    img = Image.new("L", (CANVAS, CANVAS), 0)
    d = ImageDraw.Draw(img)
    c, r = CANVAS / 2, CANVAS * float(rng.uniform(0.25, 0.45))
    fill = int(rng.integers(120, 256))
    w = int(rng.integers(3, 10))
    solid = rng.random() < 0.5
    kind = kinds[int(rng.integers(len(kinds)))]
    box = [c - r, c - r, c + r, c + r]
    if kind == "ring":
        d.ellipse(box, fill=fill if solid else None, outline=fill, width=w)
    elif kind == "face":
        d.ellipse(box, fill=fill if solid else 0, outline=fill, width=w)
        ink = 0 if solid else fill
        e = r * 0.15
        for sx in (-0.35, 0.35):
            d.ellipse([c + sx * r - e, c - 0.3 * r - e, c + sx * r + e, c - 0.3 * r + e], fill=ink)
        d.arc([c - 0.5 * r, c - 0.3 * r, c + 0.5 * r, c + 0.5 * r], 20, 160, fill=ink, width=max(2, w // 2))
    elif kind == "star":
        pts = _star(c, c, r, r * float(rng.uniform(0.35, 0.6)), int(rng.integers(4, 9)), float(rng.uniform(0, 6.3)))
        d.polygon(pts, fill=fill if solid else None, outline=fill, width=w)
    elif kind == "triangle":
        a = float(rng.uniform(0, 2 * math.pi))
        pts = [(c + r * math.cos(a + k * 2.1), c + r * math.sin(a + k * 2.1)) for k in range(3)]
        d.polygon(pts, fill=fill if solid else None, outline=fill, width=w)
    elif kind == "cross":
        t = r * float(rng.uniform(0.15, 0.35))
        d.rectangle([c - r, c - t, c + r, c + t], fill=fill)
        d.rectangle([c - t, c - r, c + t, c + r], fill=fill)
        img = img.rotate(float(rng.choice([0.0, 45.0])), resample=Image.BILINEAR)
    elif kind == "arrow":
        t = r * 0.2
        d.rectangle([c - r, c - t, c + 0.2 * r, c + t], fill=fill)
        d.polygon([(c + 0.2 * r, c - 0.6 * r), (c + r, c), (c + 0.2 * r, c + 0.6 * r)], fill=fill)
        img = img.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
    else:  # crescent
        d.ellipse(box, fill=fill)
        off = r * float(rng.uniform(0.3, 0.7))
        d.ellipse([c - r + off, c - r - 0.1 * r, c + r + off, c + r - 0.1 * r], fill=0)
        img = img.rotate(float(rng.uniform(0, 360)), resample=Image.BILINEAR)
    return img


def _smooth_field(rng: np.random.Generator, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] on the canvas: ``cells`` x ``cells`` noise, bicubic up."""
    small = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(small.resize((CANVAS, CANVAS), Image.BICUBIC), np.float32) / 255.0


def blob_image(rng: np.random.Generator, digits_are_classes: bool = False) -> Image.Image:
    """An irregular blob (a smooth field above a level, inside a soft disc), shaded."""
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS - 0.5
    field = _smooth_field(rng, int(rng.integers(3, 7))) - 1.5 * np.hypot(xx, yy)
    mask = field > np.quantile(field, float(rng.uniform(0.6, 0.85)))
    shade = 0.4 + 0.6 * _smooth_field(rng, int(rng.integers(4, 12)))
    return Image.fromarray((mask * shade * 255).astype(np.uint8))


def texture_image(rng: np.random.Generator, digits_are_classes: bool = False) -> Image.Image:
    """A texture over the whole frame: smooth or fine noise, stripes, a checkerboard, dots."""
    kind = int(rng.integers(5))
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    if kind == 0:
        a = _smooth_field(rng, int(rng.integers(4, 16)))
    elif kind == 1:
        a = rng.random((CANVAS, CANVAS)).astype(np.float32) ** float(rng.uniform(0.5, 3))
    elif kind == 2:
        th, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        a = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(th) + yy * math.sin(th)) / period)
    elif kind == 3:
        k = int(rng.integers(6, 22))
        a = ((xx // k + yy // k) % 2).astype(np.float32)
    else:
        k = int(rng.integers(8, 20))
        a = (np.hypot(xx % k - k / 2, yy % k - k / 2) < k * rng.uniform(0.15, 0.4)).astype(np.float32)
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))


DRAW = {"text": text_image, "scribble": scribble_image, "shape": shape_image, "blob": blob_image,
        "texture": texture_image}


def fit_to_frame(img: Image.Image, rng: np.random.Generator, fill: tuple[int, int] = (20, 28)) -> np.ndarray:
    """The drawing's bounding box scaled (aspect kept) so its longer side is ``fill`` pixels
    (uniform), centred on a black SIZE x SIZE frame, brightest pixel stretched to 255: the
    dataset's form. uint8 (SIZE, SIZE)."""
    box = img.point(lambda v: 255 if v > 25 else 0).getbbox()
    out = np.zeros((SIZE, SIZE), np.float32)
    if box is None:
        return out.astype(np.uint8)
    crop = img.crop(box)
    side = float(rng.uniform(*fill))
    scale = side / max(crop.size)
    w, h = max(1, round(crop.width * scale)), max(1, round(crop.height * scale))
    small = np.asarray(crop.resize((w, h), Image.LANCZOS if scale < 1 else Image.BILINEAR), np.float32)
    y0, x0 = (SIZE - h) // 2, (SIZE - w) // 2
    out[y0:y0 + h, x0:x0 + w] = small[:SIZE - y0, :SIZE - x0]
    return _stretch(out)


def _stretch(a: np.ndarray) -> np.ndarray:
    a = np.clip(a, 0, None)
    top = a.max()
    return (a * (255.0 / top)).round().clip(0, 255).astype(np.uint8) if top > 0 else a.astype(np.uint8)


def outlier_image(rng: np.random.Generator, kind: str, digits_are_classes: bool = False) -> np.ndarray:
    """One synthetic outlier of ``kind`` (KINDS) in the dataset's form, uint8 (SIZE, SIZE)."""
    img = DRAW[kind](rng, digits_are_classes)
    if kind == "texture":  # the whole frame, as a photo of a surface would be
        small = img.resize((SIZE, SIZE), Image.LANCZOS).filter(ImageFilter.SMOOTH)
        return _stretch(np.asarray(small, np.float32))
    return fit_to_frame(img, rng, (16, 23) if digits_are_classes else (20, 28))


def synthetic_outliers(n: int, seed: int, digits_are_classes: bool = False) -> np.ndarray:
    """``n`` synthetic outliers, kinds drawn with KINDS' weights: uint8 (n, SIZE, SIZE), the same
    for the same seed."""
    rng = np.random.default_rng(seed)
    names = [k for k, _ in KINDS]
    weights = np.array([w for _, w in KINDS])
    picks = rng.choice(len(names), size=n, p=weights / weights.sum())
    out = np.empty((n, SIZE, SIZE), np.uint8)
    for i, k in enumerate(picks):
        out[i] = outlier_image(rng, names[k], digits_are_classes)
    return out


# --- how well a score separates the classes from the outliers ---------------------------------
# (the scores themselves: serving/calibration.py's max_probability and energy, which the service applies)

def flagged_share(scores: np.ndarray, threshold: float) -> float:
    """The share of ``scores`` below ``threshold`` (answered ``in_distribution: false``)."""
    return float((np.asarray(scores) < threshold).mean()) if len(scores) else float("nan")


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(an in-distribution score > an outlier's), ties counting 1/2 (the Mann-Whitney U / the
    area under the ROC curve): 1 separates perfectly, 0.5 not at all."""
    a = np.asarray(in_scores, np.float64)
    b = np.sort(np.asarray(out_scores, np.float64))
    below = np.searchsorted(b, a, side="left")
    ties = np.searchsorted(b, a, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(a) * len(b)))
