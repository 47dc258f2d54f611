"""Accuracy over HTTP vs PyTorch eval-mode accuracy on the same test images of the
checkpoint's dataset.

    .venv/bin/python -m scripts.http_accuracy --url http://127.0.0.1:3000 --n 1000 \
        --checkpoint models/default/checkpoint.pt [--data-dir tests/data]

Each test image is sent as a PNG file (lossless, 28x28 L) to /classify; the same images go
through the checkpoint's PyTorch model in eval mode via training's own normalisation (the
training-evaluation path). Prints both accuracies, the number of images where they differ and
the largest difference between the two top-1 probabilities.

With ``--photos``, the same test images are also rendered as photos or scans
(scripts/make_photos.py: light backgrounds, 100-1,000 px, non-square, JPEG and PNG) and sent
as they are; the photo accuracy is printed next to the dataset-form accuracy:

    .venv/bin/python -m scripts.http_accuracy --n 1000 --photos --photo-seed 1
    .venv/bin/python -m scripts.http_accuracy --photos-dir DIR   # a set made elsewhere (labels.csv)

The exit status is 1 when the dataset-form answers differ from PyTorch's, or the photo accuracy
is more than ``--max-photo-gap`` (default 0.04) below the dataset-form accuracy.
"""

from __future__ import annotations

import argparse
import io
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image

from scripts import http_client
from serving.conversions import CONVERT_MODES


def http_vs_torch(url: str, checkpoint: str, n: int = 1000, concurrency: int = 8,
                  data_dir: str | None = None) -> dict:
    import torch

    from training.checkpoint import load_checkpoint
    from training.data import load_dataset, normalize

    model, ckpt = load_checkpoint(checkpoint)
    data = ckpt["data"]
    ds = load_dataset(data["dataset"], data_dir=data_dir, download=False, progress=False)
    images, labels = ds.test.images[:n], ds.test.labels[:n].numpy()
    with torch.no_grad():
        # the service answers with calibrated probabilities: softmax(logits / T), T from the
        # checkpoint's calibration record (serving/calibration.py; 1 when there is none)
        temperature = (ckpt.get("calibration") or {}).get("temperature", 1.0)
        logits = model(normalize(images, data["mean"], data["std"])).double()
        torch_prob = torch.softmax(logits / temperature, 1).numpy()
    torch_pred = torch_prob.argmax(1)

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(images[i, 0].numpy(), "L").save(buf, "PNG")
        return buf.getvalue()

    with httpx.Client(base_url=url, timeout=60) as client:
        def classify(i: int) -> tuple[int, float]:
            answer = http_client.classify(client, {"image": (f"{i}.png", png(i))})
            return answer["index"], answer["probability"]

        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(classify, range(len(labels))))
    http_pred = np.array([a[0] for a in answers])
    http_prob = np.array([a[1] for a in answers])
    return {"n": len(labels), "dataset": ds.describe(),
            "http_accuracy": float((http_pred == labels).mean()),
            "torch_accuracy": float((torch_pred == labels).mean()),
            "disagreements": int((http_pred != torch_pred).sum()),
            # the service's top-1 probability vs PyTorch's probability of that same class
            "max_prob_diff": float(np.abs(http_prob - torch_prob[np.arange(len(labels)), http_pred]).max(initial=0))}


def photo_accuracy(url: str, items: list[tuple[bytes, int]], concurrency: int = 8,
                   convert: str = "auto") -> dict:
    """HTTP accuracy on (file bytes, label) pairs, and how many the service converted."""
    with httpx.Client(base_url=url, timeout=60) as client:
        def classify(item: tuple[bytes, int]) -> tuple[int, str]:
            answer = http_client.classify(client, {"image": ("photo", item[0])}, {"convert": convert})
            return answer["index"], answer["converted"]

        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(classify, items))
    pred = np.array([a[0] for a in answers])
    labels = np.array([label for _, label in items])
    converted = [a[1] for a in answers]
    return {"n": len(items), "photo_accuracy": float((pred == labels).mean()) if items else float("nan"),
            "converted": {c: converted.count(c) for c in sorted(set(converted))}}


def rendered_photos(checkpoint: str, n: int, seed: int, data_dir: str | None = None) -> list[tuple[bytes, int]]:
    """The first ``n`` test images of the checkpoint's dataset rendered as photos (make_photos)."""
    from scripts.make_photos import render_photo
    from training.checkpoint import load_checkpoint
    from training.data import load_dataset

    _, ckpt = load_checkpoint(checkpoint)
    ds = load_dataset(ckpt["data"]["dataset"], data_dir=data_dir, download=False, progress=False)
    rng = np.random.default_rng(seed)
    images, labels = ds.test.images[:n, 0].numpy(), ds.test.labels[:n].numpy()
    return [(render_photo(image, rng)[0], int(label)) for image, label in zip(images, labels, strict=True)]


def photos_from_dir(directory: str) -> list[tuple[bytes, int]]:
    from pathlib import Path

    from scripts.make_photos import read_labels

    return [(path.read_bytes(), label) for path, label in read_labels(Path(directory))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--checkpoint", default="models/default/checkpoint.pt")
    p.add_argument("--data-dir", default=None, help="where the test images are (see docs/reproduction.md, \"Data\")")
    p.add_argument("--photos", action="store_true", help="also send the test images rendered as photos")
    p.add_argument("--photo-seed", type=int, default=1, help="seed of the photo rendering")
    p.add_argument("--photos-dir", default=None, help="send these photos (make_photos layout) instead")
    p.add_argument("--convert", default="auto", choices=CONVERT_MODES,
                   help="the convert option sent with each photo")
    p.add_argument("--max-photo-gap", type=float, default=0.04)
    args = p.parse_args(argv)
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
        p.error("runs against 127.0.0.1 / localhost only")
    r = http_vs_torch(args.url, args.checkpoint, args.n, data_dir=args.data_dir)
    print(f"{r['n']} {r['dataset']} test images: HTTP accuracy {r['http_accuracy']:.4f}, "
          f"PyTorch eval-mode accuracy {r['torch_accuracy']:.4f}, "
          f"{r['disagreements']} images answered differently, max top-1 probability "
          f"difference {r['max_prob_diff']:.2g}")
    ok = r["disagreements"] == 0
    if args.photos or args.photos_dir:
        items = (photos_from_dir(args.photos_dir) if args.photos_dir
                 else rendered_photos(args.checkpoint, args.n, args.photo_seed, args.data_dir))
        ph = photo_accuracy(args.url, items, convert=args.convert)
        where = args.photos_dir or f"the same test images rendered as photos (seed {args.photo_seed})"
        gap = r["http_accuracy"] - ph["photo_accuracy"]
        print(f"{ph['n']} photos, {where}: HTTP accuracy {ph['photo_accuracy']:.4f} "
              f"(dataset form {r['http_accuracy']:.4f}, gap {gap:+.4f}; converted {ph['converted']}; "
              f"convert={args.convert})")
        ok = ok and gap <= args.max_photo_gap
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
