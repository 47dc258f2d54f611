"""Render dataset images as the photos and scans people send: a dark garment on a light studio
background (Fashion-MNIST), dark ink on paper (MNIST).

    .venv/bin/python -m scripts.make_photos --dataset fashion-mnist --split test --n 1000 \
        --seed 1 --out runs/photos/fashion-mnist

Each image of the split (the first ``--n``) becomes one RGB file: light background of a random
shade and tint, 100-1,000 px on the long side, non-square canvas, the object at 45-90% of the
short side with a small offset from the centre, a faint lighting gradient and sensor noise,
saved as JPEG (quality 70-95) or PNG. ``labels.csv`` lists ``file,index,label``. Report on the
test split (held out); tune on ``--split train`` or another seed.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

LONG_SIDE = (100, 1000)  # px, the canvas's longest edge
ASPECT = (0.6, 1.6)  # canvas width / height
OBJECT_FRACTION = (0.45, 0.9)  # the 28x28 image's side / the canvas's short side
OFFSET_FRACTION = 0.08  # of the canvas side, each direction
BACKGROUND_SHADE = (175, 255)  # paper or studio background gray level
TINT = 8  # +- per RGB channel
INK_STRENGTH = (0.8, 1.0)  # how dark the darkest ink gets, relative to black
GRADIENT = 10  # +- gray levels across the canvas (uneven light)
NOISE_SIGMA = (0.0, 3.0)
JPEG_QUALITY = (70, 95)


def render_photo(image: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """A uint8 (28, 28) light-on-black dataset image -> (file bytes, "jpg" | "png"), the dark
    object on a light background as described in the module docstring."""
    x = np.asarray(image, dtype=np.float32) / 255.0
    long_side = int(rng.integers(LONG_SIDE[0], LONG_SIDE[1] + 1))
    aspect = float(rng.uniform(*ASPECT))
    w, h = (long_side, max(1, round(long_side / aspect))) if aspect >= 1 else (max(1, round(long_side * aspect)), long_side)
    side = max(8, round(min(w, h) * rng.uniform(*OBJECT_FRACTION)))
    obj = Image.fromarray(x, "F").resize((side, side), Image.BICUBIC)
    ink = np.clip(np.asarray(obj, dtype=np.float32), 0.0, 1.0) * np.float32(rng.uniform(*INK_STRENGTH))
    shade = float(rng.uniform(*BACKGROUND_SHADE))
    # light falls off across the canvas: a linear ramp in a random direction
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5)) * 2 * GRADIENT * rng.uniform(0, 1)
    light = shade + ramp  # (h, w) the background's brightness
    coverage = np.zeros((h, w), dtype=np.float32)
    cy = (h - side) // 2 + int(rng.uniform(-OFFSET_FRACTION, OFFSET_FRACTION) * h)
    cx = (w - side) // 2 + int(rng.uniform(-OFFSET_FRACTION, OFFSET_FRACTION) * w)
    cy, cx = int(np.clip(cy, 0, h - side)), int(np.clip(cx, 0, w - side))
    coverage[cy:cy + side, cx:cx + side] = ink
    gray = light * (1.0 - coverage)  # the object absorbs the light: dark on light
    tint = rng.uniform(-TINT, TINT, size=3).astype(np.float32)
    rgb = gray[..., None] + tint + rng.normal(0, rng.uniform(*NOISE_SIGMA), size=(h, w, 3)).astype(np.float32)
    pil = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    if rng.random() < 0.5:
        pil.save(buf, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
        return buf.getvalue(), "jpg"
    pil.save(buf, "PNG")
    return buf.getvalue(), "png"


def render_split(images: np.ndarray, labels: np.ndarray, classes: list[str], out: Path,
                 seed: int) -> Path:
    """Render every (28, 28) image into ``out``; returns the path of labels.csv."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        data, ext = render_photo(image, rng)
        name = f"{i:05d}.{ext}"
        (out / name).write_bytes(data)
        rows.append((name, int(label), classes[int(label)]))
    path = out / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("file", "index", "label"))
        writer.writerows(rows)
    return path


def read_labels(directory: Path) -> list[tuple[Path, int]]:
    """(file, class index) pairs of a directory written by render_split."""
    with (directory / "labels.csv").open(newline="") as f:
        return [(directory / r["file"], int(r["index"])) for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    from training.data import load_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist"))
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--start", type=int, default=0, help="first image of the split")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset, data_dir=args.data_dir, download=False, progress=False)
    split = getattr(ds, args.split)
    sl = slice(args.start, args.start + args.n)
    path = render_split(split.images[sl, 0].numpy(), split.labels[sl].numpy(), list(ds.spec.classes),
                        args.out, args.seed)
    print(f"{args.n} {args.dataset} {args.split} images (from #{args.start}) rendered as photos "
          f"into {args.out} (seed {args.seed}); labels in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
