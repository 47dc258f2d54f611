"""Procedural drawings of tops, shirts, pullovers, coats and dresses (issue 20).

Real labelled pictures of pullovers, coats and shirts are scarce outside the evaluation (the
whole Iconify training set has 9 pullover, 18 coat and 8 shirt icons), and at 28 x 28 these
classes differ by a few features a drawing shows in its own way: how long the body is, whether
it opens down the front, a pointed collar with a button placket, ribbed bands at hem and cuffs, a
hood, lapels. This module draws garments of the upper-body classes from those features, each
picture labelled by construction: one body and sleeve geometry for all five, the features that
make the class on top, in the styles icons and emoji use (outline, filled with cut-out details,
colour with a dark outline), then rendered and converted exactly as training/icons.py does a
real icon, so they join the batches as the icons do.

``garment_svg(cls, rng)`` is one random drawing; ``build_drawing_set`` a seeded set of them.
The features per class (what the drawing may show, never what it must) are in FEATURES.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

from serving.conversions import convert_image

from .icons import BACKGROUNDS, IconSet, on_background, render_svg

# What each class's drawings may show; every feature is drawn with its own probability in
# garment_svg. Lengths are the body's height over its shoulder width.
FEATURES: dict[str, dict] = {
    "T-shirt/top": {"sleeves": "short or none", "length": (1.0, 1.35), "neck": "crew, V or scoop",
                    "front": "closed"},
    "Shirt": {"sleeves": "long (4 in 5) or short; or folded as in a shop", "length": (1.1, 1.45),
              "neck": "pointed collar", "front": "button placket, cuffs, chest pocket, necktie"},
    "Pullover": {"sleeves": "long", "length": (0.95, 1.3), "neck": "crew, V, turtleneck or hood",
                 "front": "closed; ribbed hem and cuffs, kangaroo pocket with a hood"},
    "Coat": {"sleeves": "long", "length": (1.35, 2.2), "neck": "lapels, stand collar or hood",
             "front": "open down its length: buttons (one or two rows) or zip, flap pockets, belt; "
                      "quilted (a puffer)"},
    "Dress": {"sleeves": "none, short or long", "length": (1.8, 2.6), "neck": "crew, V or scoop",
              "front": "fitted top, flared skirt"},
}
CLASSES = tuple(FEATURES)
STYLES = ("outline", "cutout", "emoji")  # stroke only; filled with details cut out; colour + outline


@dataclass(frozen=True)
class _Body:
    """Right half of a garment (x from the centre line at 50), in viewBox units."""
    neck: float  # neck half-width
    top: float  # y of the neckline's sides
    shoulder: tuple[float, float]
    armpit: tuple[float, float]
    hem: tuple[float, float]  # right end of the hem
    waist: tuple[float, float] | None  # a dress's waist (the skirt flares below it)


def _mirror(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The right half's outline (top to bottom) and its mirror image back up: a closed shape."""
    return points + [(100.0 - x, y) for x, y in reversed(points)]


def _path(points: list[tuple[float, float]], close: bool = True) -> str:
    d = "M" + " L".join(f"{x:.2f},{y:.2f}" for x, y in points)
    return d + (" Z" if close else "")


def _colour(rng: np.random.Generator, dark: bool = False) -> str:
    """A random colour (hue uniform; dark ones for outlines and details)."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.8),
                                  rng.uniform(0.15, 0.45) if dark else rng.uniform(0.35, 0.95))
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _body(cls: str, rng: np.random.Generator) -> _Body:
    lo, hi = FEATURES[cls]["length"]
    sw = rng.uniform(17, 23)  # shoulder half-width
    height = 2 * sw * rng.uniform(lo, hi)
    top = rng.uniform(8, 14)
    drop = rng.uniform(1.5, 5)  # shoulder slope
    neck = sw * rng.uniform(0.32, 0.48)
    armpit_y = top + drop + rng.uniform(11, 16)
    aw = sw * rng.uniform(0.82, 0.95)
    hem_y = top + height
    waist = None
    if cls == "Dress":
        waist = (50 + aw * rng.uniform(0.8, 0.95), top + height * rng.uniform(0.32, 0.45))
        hw = sw * rng.uniform(1.05, 1.6)
    elif cls == "Coat":
        hw = aw * rng.uniform(0.95, 1.2)
    else:
        hw = aw * rng.uniform(0.9, 1.05)
    return _Body(neck, top, (50 + sw, top + drop), (50 + aw, armpit_y), (50 + hw, hem_y), waist)


def _sleeve(b: _Body, length: float, angle: float, width: float) -> list[tuple[float, float]]:
    """Right sleeve polygon: from the shoulder along ``angle`` (degrees from straight down,
    outwards) for ``length``, a cuff ``width`` wide, back to the armpit."""
    a = math.radians(angle)
    sx, sy = b.shoulder
    ox, oy = sx + length * math.sin(a), sy + length * math.cos(a)
    ix, iy = ox - width * math.cos(a), oy + width * math.sin(a)
    return [b.shoulder, (ox, oy), (ix, iy), b.armpit]


Cuff = tuple[tuple[float, float], tuple[float, float]]


@dataclass
class _Details:
    """What a class draws over the body and sleeves."""
    shapes: list[str] = field(default_factory=list)  # filled parts (hood, collar) drawn like the body
    lines: list[str] = field(default_factory=list)  # strokes: openings, seams, bands, pockets
    dots: list[tuple[float, float]] = field(default_factory=list)  # buttons
    inner: str | None = None  # what shows inside an open front (emoji style: another colour)

    def both(self, points, close=False) -> None:
        """A stroke and its mirror image."""
        self.lines.append(_path(points, close))
        self.lines.append(_path([(100 - x, y) for x, y in points], close))


def _hood(b: _Body, half_width: float, rise: float) -> str:
    t = b.top
    return (f"M{50 - half_width:.2f},{t + 4:.2f} C{50 - half_width:.2f},{t - rise:.2f} "
            f"{50 + half_width:.2f},{t - rise:.2f} {50 + half_width:.2f},{t + 4:.2f} "
            f"Q50,{t + 10:.2f} {50 - half_width:.2f},{t + 4:.2f} Z")


def _side_x(b: _Body, y: float) -> float:
    """The body's right edge at height ``y`` (between the armpit and the hem)."""
    return b.armpit[0] + (b.hem[0] - b.armpit[0]) * (y - b.armpit[1]) / (b.hem[1] - b.armpit[1])


def _sleeve_length(b: _Body, cuff: Cuff) -> float:
    """From the cuff to the shoulder (at least 1), to turn lengths along the sleeve into fractions."""
    return max(math.dist(cuff[0], b.shoulder), 1.0)


def _cuff_seam(b: _Body, cuff: Cuff, t: float) -> list[tuple[float, float]]:
    """A seam across the right sleeve, ``t`` of the way from its cuff back to the body."""
    (ox, oy), (ix, iy) = cuff
    (sx, sy), (ax, ay) = b.shoulder, b.armpit
    return [(ox + (sx - ox) * t, oy + (sy - oy) * t), (ix + (ax - ix) * t, iy + (ay - iy) * t)]


def _shirt(b: _Body, d: _Details, rng: np.random.Generator, neck_depth: float, cuff: Cuff | None) -> None:
    """A pointed collar, a button placket, maybe a chest pocket, cuffs on long sleeves."""
    height = b.hem[1] - b.top
    cw = b.neck * rng.uniform(0.9, 1.3)
    tip = b.top + rng.uniform(7, 12)
    collar = [(50, b.top + neck_depth), (50 + b.neck + 1, b.top - 1.5), (50 + cw * 0.6, tip)]
    d.shapes.append(_path(collar))
    d.shapes.append(_path([(100 - x, y) for x, y in collar]))
    d.lines.append(_path([(50, b.top + neck_depth), (50, b.hem[1])], close=False))
    n = int(rng.integers(3, 7))
    d.dots += [(50 + 2.2, b.top + neck_depth + (i + 0.5) * (height - neck_depth) / n) for i in range(n)]
    if rng.random() < 0.3:  # a necktie: a knot under the collar, the blade down the placket
        k, w, y0 = rng.uniform(2.5, 4), rng.uniform(4, 6.5), b.top + neck_depth
        end = b.top + height * rng.uniform(0.45, 0.7)
        d.shapes.append(_path([(50 - k, y0 - 2), (50 + k, y0 - 2), (50 + k * 0.7, y0 + 3), (50 - k * 0.7, y0 + 3)]))
        d.shapes.append(_path([(50 - k * 0.7, y0 + 3), (50 + k * 0.7, y0 + 3), (50 + w, end - 5), (50, end),
                               (50 - w, end - 5)]))
    if rng.random() < 0.5:
        px, py = 50 - b.neck - rng.uniform(3, 6), b.top + height * 0.25
        d.lines.append(_path([(px, py), (px - 8, py), (px - 8, py + 8), (px, py + 8)], close=True))
    if cuff is not None:
        d.both(_cuff_seam(b, cuff, 0.18))


def _pullover(b: _Body, d: _Details, rng: np.random.Generator, neck_depth: float, cuff: Cuff | None) -> None:
    """A crew, V, turtle neck or a hood (with a kangaroo pocket, maybe drawstrings); ribbed bands
    at the hem and the cuffs; never an opening down the front."""
    height = b.hem[1] - b.top
    kind = rng.choice(["crew", "v", "turtleneck", "hood"])
    if kind == "v":
        d.lines.append(_path([(50 - b.neck, b.top), (50, b.top + rng.uniform(8, 14)), (50 + b.neck, b.top)], close=False))
    elif kind == "turtleneck":
        d.shapes.append(_path([(50 - b.neck, b.top + 2), (50 - b.neck * 0.9, b.top - 6),
                               (50 + b.neck * 0.9, b.top - 6), (50 + b.neck, b.top + 2)]))
    elif kind == "hood":
        d.shapes.append(_hood(b, b.neck + rng.uniform(3, 6), 14))
        py = b.top + height * rng.uniform(0.5, 0.6)
        pw = b.neck * rng.uniform(1.1, 1.6)
        d.lines.append(_path([(50 - pw, py + 12), (50 - pw * 0.8, py), (50 + pw * 0.8, py), (50 + pw, py + 12)], close=True))
        if rng.random() < 0.6:
            for x in (50 - 2.5, 50 + 2.5):
                d.lines.append(_path([(x, b.top + neck_depth), (x, b.top + neck_depth + 9)], close=False))
    band = rng.uniform(4, 7)
    if rng.random() < 0.85:
        d.lines.append(_path([(100 - b.hem[0] + 0.5, b.hem[1] - band), (b.hem[0] - 0.5, b.hem[1] - band)], close=False))
        if rng.random() < 0.4:  # ribs
            for x in np.arange(100 - b.hem[0] + 3, b.hem[0] - 1, 3.5):
                d.lines.append(_path([(x, b.hem[1] - band), (x, b.hem[1])], close=False))
    if cuff is not None and rng.random() < 0.85:
        d.both(_cuff_seam(b, cuff, band / _sleeve_length(b, cuff)))


def _coat(b: _Body, d: _Details, rng: np.random.Generator, neck_depth: float, cuff: Cuff | None) -> None:
    """Lapels (the inside of the open front showing), a stand collar or a hood; an opening down the
    whole length closed by buttons (one or two rows) or a zip; flap pockets; quilting or a belt."""
    height = b.hem[1] - b.top
    kind = rng.choice(["lapels", "lapels", "stand", "hood"])
    off = rng.uniform(0, 3) if rng.random() < 0.3 else 0.0  # double-breasted overlap
    v = b.top + height * rng.uniform(0.2, 0.38)
    if kind == "lapels":
        d.both([(50 + b.neck, b.top), (50 + b.neck + rng.uniform(3, 7), b.top + (v - b.top) * 0.45), (50 + off, v)])
        d.inner = _path([(50 - b.neck + 1, b.top + 1), (50, v - 1), (50 + b.neck - 1, b.top + 1),
                         (50, b.top + neck_depth * 0.6)], close=True)
        d.lines.append(_path([(50 - b.neck, b.top), (50 + off, v)], close=False))
    elif kind == "stand":
        d.shapes.append(_path([(50 - b.neck, b.top + 2), (50 - b.neck, b.top - 5),
                               (50 + b.neck, b.top - 5), (50 + b.neck, b.top + 2)]))
        v = b.top + neck_depth
    else:
        d.shapes.append(_hood(b, b.neck + rng.uniform(4, 7), 15))
        v = b.top + neck_depth
    d.lines.append(_path([(50 + off, v), (50 + off, b.hem[1])], close=False))  # the front opening
    if kind != "lapels" and rng.random() < 0.5:  # a zip
        for y in np.arange(v + 2, b.hem[1] - 1, 2.5):
            d.lines.append(_path([(50 + off - 1.2, y), (50 + off + 1.2, y)], close=False))
    else:
        n = int(rng.integers(2, 6))
        ys = [v + (i + 0.5) * (b.hem[1] - v) * rng.uniform(0.5, 0.8) / n for i in range(n)]
        d.dots += [(50 + off + 3.5, y) for y in ys]
        if off or rng.random() < 0.3:
            d.dots += [(50 + off - 7, y) for y in ys]
    if rng.random() < 0.7:
        py = b.top + height * rng.uniform(0.55, 0.7)
        px = 50 + (b.hem[0] - 50) * rng.uniform(0.35, 0.55)
        d.both([(px - 5, py), (px + 5, py), (px + 5, py + 3), (px - 5, py + 3)], close=True)
    if rng.random() < 0.25:  # quilted: a puffer's bands across the body and the sleeves
        step = rng.uniform(5, 8)
        for y in np.arange(b.armpit[1], b.hem[1] - 2, step):
            x = _side_x(b, y)
            d.lines.append(_path([(100 - x, y), (x, y)], close=False))
        if cuff is not None:
            for t in np.arange(0.15, 0.9, step / _sleeve_length(b, cuff)):
                d.both(_cuff_seam(b, cuff, t))
    elif rng.random() < 0.3:  # belt
        by = b.top + height * rng.uniform(0.38, 0.5)
        bx = _side_x(b, by)
        d.lines.append(_path([(100 - bx, by), (bx, by), (bx, by + 3.5), (100 - bx, by + 3.5)], close=True))


def _folded_sleeves(b: _Body, d: _Details, rng: np.random.Generator) -> None:
    """A folded shirt's sleeves: their edges down the sides, or folded across the front."""
    sw, height = b.hem[0] - 50, b.hem[1] - b.top
    if rng.random() < 0.5:
        d.both([(50 + sw * 0.55, b.top + height * 0.2), (50 + sw * 0.55, b.hem[1])])
    else:
        d.both([(b.hem[0], b.top + height * 0.25), (50 + sw * 0.4, b.top + height * 0.6),
                (50 + sw * 0.4, b.hem[1])])


def _dress(b: _Body, d: _Details, rng: np.random.Generator, neck_depth: float, cuff: Cuff | None) -> None:
    """Maybe a seam at the waist."""
    if b.waist is not None and rng.random() < 0.7:
        wx, wy = b.waist
        d.lines.append(_path([(100 - wx, wy), (wx, wy)], close=False))


def _t_shirt(b: _Body, d: _Details, rng: np.random.Generator, neck_depth: float, cuff: Cuff | None) -> None:
    """Maybe a V neck."""
    if rng.random() < 0.4:
        d.lines.append(_path([(50 - b.neck, b.top), (50, b.top + rng.uniform(6, 11)), (50 + b.neck, b.top)], close=False))


# what each class draws over its body and sleeves (``cuff``: a long sleeve's, else None)
_FEATURE_DRAWERS = {"Shirt": _shirt, "Pullover": _pullover, "Coat": _coat, "Dress": _dress,
                    "T-shirt/top": _t_shirt}


def garment_svg(cls: str, rng: np.random.Generator, style: str | None = None) -> str:
    """One random drawing of class ``cls`` (a key of FEATURES) as standalone SVG text."""
    if cls not in FEATURES:
        raise ValueError(f"no drawings of {cls!r}; classes drawn: {', '.join(CLASSES)}")
    style = style or STYLES[int(rng.integers(len(STYLES)))]
    b = _body(cls, rng)
    folded = cls == "Shirt" and rng.random() < 0.25  # as in a shop: a rectangle, the sleeves behind it
    if folded:
        x = b.shoulder[0]  # folded about as high as wide
        hem_y = b.top + 2 * (x - 50) * rng.uniform(0.85, 1.15)
        b = _Body(b.neck, b.top, (x, b.top + 1), (x, b.top + 3), (x, hem_y), None)
    long_sleeves = cls in ("Pullover", "Coat") or (cls == "Shirt" and rng.random() < 0.8) or (
        cls == "Dress" and rng.random() < 0.15)
    sleeveless = folded or (cls == "T-shirt/top" and rng.random() < 0.25) or (
        cls == "Dress" and rng.random() < 0.45)
    sleeve: list[tuple[float, float]] = []
    cuff: Cuff | None = None
    if not sleeveless:
        if long_sleeves:
            length = (b.hem[1] - b.shoulder[1]) * rng.uniform(0.75, 1.05)
            angle = rng.uniform(8, 48)
            width = rng.uniform(7, 11)
        else:
            length = rng.uniform(9, 16)
            angle = rng.uniform(45, 75)
            width = rng.uniform(9, 13)
        sleeve = _sleeve(b, length, angle, width)
        cuff = (sleeve[1], sleeve[2])

    # the body's right half, neck to hem
    if folded:  # from the shoulder straight down to the hem
        half = [(50 + b.neck, b.top), b.shoulder]
    elif sleeveless:
        half = [(50 + b.neck, b.top), (50 + b.neck + rng.uniform(2, 5), b.top),
                (b.armpit[0] + rng.uniform(-1, 1), b.armpit[1])]
    else:
        half = [(50 + b.neck, b.top), b.shoulder, b.armpit]
    if b.waist:
        half.append(b.waist)
    half.append(b.hem)
    neck_depth = rng.uniform(3, 8)
    # the neckline: a curve down to the centre closes the body at the top
    body_d = _path(_mirror(half), close=False) + (
        f" Q50,{b.top + 2 * neck_depth:.2f} {50 + b.neck:.2f},{b.top:.2f} Z")

    d = _Details()
    if folded:
        _folded_sleeves(b, d, rng)
    if cls in _FEATURE_DRAWERS:
        _FEATURE_DRAWERS[cls](b, d, rng, neck_depth, cuff if long_sleeves else None)
    sleeves_d = "".join(_path(s) for s in ([sleeve, [(100 - x, y) for x, y in sleeve]] if sleeve else []))
    # the drawing's extent (a hood or collar rises up to 16 above the neckline's sides)
    right = max([x for x, _ in half + sleeve])
    bottom = max([y for _, y in half + sleeve])
    box = (100 - right - 5, b.top - 18, 2 * right - 100 + 10, bottom - b.top + 23)
    return _svg(style, rng, [sleeves_d, body_d] + d.shapes, d.lines, d.dots, d.inner, box)


def _elements(parts: list[str], fill: str, stroke: str, width: float, lines: list[str],
              line_colour: str, line_width: float, dots: list[tuple[float, float]], r: float,
              between: list[str] | None = None) -> list[str]:
    """SVG elements: the filled parts, then ``between`` (an open front's inside), the detail
    strokes and the buttons."""
    return ([f'<path d="{d}" fill="{fill}" stroke="{stroke}" stroke-width="{width:.2f}" '
             f'stroke-linejoin="round"/>' for d in parts if d] + (between or [])
            + [f'<path d="{d}" fill="none" stroke="{line_colour}" stroke-width="{line_width:.2f}" '
               f'stroke-linecap="round"/>' for d in lines]
            + [f'<circle cx="{x:.2f}" cy="{y:.2f}" r="{r:.2f}" fill="{line_colour}"/>' for x, y in dots])


def _svg(style: str, rng: np.random.Generator, parts: list[str], lines: list[str],
         dots: list[tuple[float, float]], inner: str | None,
         box: tuple[float, float, float, float]) -> str:
    sw = rng.uniform(2.0, 6.0)
    dw = sw * rng.uniform(0.5, 1.0)
    r = rng.uniform(1.0, 1.8)
    if style == "outline":
        ink = "#000000" if rng.random() < 0.6 else _colour(rng, dark=True)
        # each part filled white under its stroke, so overlapping parts hide what is behind them
        fill = "#ffffff" if rng.random() < 0.7 else "none"
        els = _elements(parts, fill, ink, sw, lines, ink, dw, dots, r)
    elif style == "cutout":  # the details cut out of the filled shape in the background's white
        ink = "#000000" if rng.random() < 0.6 else _colour(rng, dark=True)
        els = _elements(parts, ink, "#ffffff", dw, lines, "#ffffff", dw, dots, r)
    else:  # emoji: a colour fill, a darker outline and details, the inside of an open front
        fill = _colour(rng)
        edge = _colour(rng, dark=True) if rng.random() < 0.7 else "none"
        ew = rng.uniform(1.0, 3.0)
        inside = [] if inner is None else [f'<path d="{inner}" fill="{_colour(rng)}"/>']
        detail = edge if edge != "none" else _colour(rng, dark=True)
        els = _elements(parts, fill, edge, ew, lines, detail, ew, dots, r, inside)
    x, y, w, h = box
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x:.2f} {y:.2f} {w:.2f} {h:.2f}" '
            f'width="{w:.2f}" height="{h:.2f}">{"".join(els)}</svg>')


def build_drawing_set(classes: list[str], pipeline: str, per_class: int, seed: int,
                      render=render_svg) -> IconSet:
    """``per_class`` drawings of each FEATURES class among ``classes``, drawn from ``seed`` (each
    on a white or a transparent background, a style drawn uniformly) and converted as the service
    would an upload; labels index ``classes``. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    drawn = [c for c in CLASSES if c in classes]
    images, labels, names = [], [], []
    for cls in drawn:
        for i in range(per_class):
            style = STYLES[int(rng.integers(len(STYLES)))]
            background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
            rgba = render(garment_svg(cls, rng, style))
            px, _ = convert_image(on_background(rgba, background), 1, 28, 28, {"pipeline": pipeline}, "auto")
            images.append(px)
            labels.append(classes.index(cls))
            names.append(f"drawing:{cls}:{i}|{background}|{style}")
    source = {"version": f"seed {seed}", "license": "this project's", "icons": len(names),
              "images": len(names), "author": "training/drawings.py (procedural)"}
    return IconSet(np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64), names,
                   {"drawings": source})
