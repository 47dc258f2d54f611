"""Write the sample images of samples/ from the Fashion-MNIST test split (deterministic).

    .venv/bin/python -m scripts.make_samples [--out samples]

- ``fmnist-test-<i>-<class>.png``: the first test image of each class, exactly as stored (28x28 L);
- ``fmnist-test-<i>-<class>.jpg``: one of them as a JPEG (quality 90): lossy, so its pixels differ;
- ``fmnist-test-<i>-<class>-photo.jpg``: a larger RGB "photo": upscaled 10x to 280x280, tinted,
  with a wider canvas (360x280, letterboxed by the service) and mild noise;
- ``fmnist-test-<i>-<class>-rgba.png``: RGBA, transparent where the image is black;
- ``fmnist-test-<i>-<class>-shop-photo.jpg``: a shop photo (dark garment on a light background,
  scripts/make_photos.py), which the service converts the Fashion-MNIST way;
- ``mnist/mnist-test-<i>-<digit>-scan.jpg``: MNIST test digits as dark ink on paper, for
  ``models/mnist`` (skipped when MNIST is not found; ``--mnist-data-dir``).
The true class is in each file name.
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.make_photos import render_photo
from training.data import DatasetNotFoundError, load_dataset


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def small_jpeg(data: bytes, path: Path) -> None:
    """A rendered photo saved as a JPEG of quality 80 (the samples stay small in the repository)."""
    Image.open(io.BytesIO(data)).convert("RGB").save(path, quality=80)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="samples")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--mnist-data-dir", default=None)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("fashion-mnist", data_dir=args.data_dir, download=False, progress=False)
    images, labels = ds.test.images[:, 0].numpy(), ds.test.labels.numpy()
    classes = ds.spec.classes
    first = {c: int(np.flatnonzero(labels == c)[0]) for c in range(len(classes))}
    for c, i in first.items():
        Image.fromarray(images[i], "L").save(out / f"fmnist-test-{i:04d}-{slug(classes[c])}.png")
    # the JPEG, photo and RGBA variants: a sneaker, a bag and a trouser
    i = first[7]
    Image.fromarray(images[i], "L").save(out / f"fmnist-test-{i:04d}-{slug(classes[7])}.jpg", quality=90)
    i = first[8]
    big = Image.fromarray(images[i], "L").resize((280, 280), Image.BICUBIC)
    rgb = np.asarray(big, np.float32)[..., None] * np.array([1.0, 0.85, 0.7], np.float32)
    rgb += np.random.default_rng(0).normal(0, 4, rgb.shape)
    canvas = np.zeros((280, 360, 3), np.float32)
    canvas[:, 40:320] = rgb
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB").save(
        out / f"fmnist-test-{i:04d}-{slug(classes[8])}-photo.jpg", quality=92)
    i = first[1]
    g = images[i]
    rgba = np.stack([g, g, g, np.where(g > 0, 255, 0).astype(np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(out / f"fmnist-test-{i:04d}-{slug(classes[1])}-rgba.png")
    rng = np.random.default_rng(13)
    for c in (9, 2, 5):  # an ankle boot, a pullover, a sandal as shop photos
        i = first[c]
        small_jpeg(render_photo(images[i], rng)[0], out / f"fmnist-test-{i:04d}-{slug(classes[c])}-shop-photo.jpg")
    try:
        mnist = load_dataset("mnist", data_dir=args.mnist_data_dir, download=False, progress=False).test
    except DatasetNotFoundError as e:
        print(f"MNIST scans skipped: {str(e).splitlines()[0]}")
    else:
        (out / "mnist").mkdir(exist_ok=True)
        for i in range(4):
            small_jpeg(render_photo(mnist.images[i, 0].numpy(), rng)[0],
                       out / "mnist" / f"mnist-test-{i:04d}-{int(mnist.labels[i])}-scan.jpg")
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f, f.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
