"""Accuracy over HTTP vs PyTorch eval-mode accuracy on the same test images of the
checkpoint's dataset.

    .venv/bin/python -m scripts.http_accuracy --url http://127.0.0.1:3000 --n 1000 \
        --checkpoint models/default/checkpoint.pt [--data-dir tests/data]

Each test image is sent as a PNG file (lossless, 28x28 L) to /classify; the same images go
through the checkpoint's PyTorch model in eval mode via training's own normalisation (the
training-evaluation path). Prints both accuracies, the number of images where they differ and
the largest difference between the two top-1 probabilities.
"""

from __future__ import annotations

import argparse
import io
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image


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
        torch_prob = torch.softmax(model(normalize(images, data["mean"], data["std"])).double(), 1).numpy()
    torch_pred = torch_prob.argmax(1)

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(images[i, 0].numpy(), "L").save(buf, "PNG")
        return buf.getvalue()

    with httpx.Client(base_url=url, timeout=60) as client:
        def classify(i: int) -> tuple[int, float]:
            r = client.post("/classify", files={"image": (f"{i}.png", png(i))})
            r.raise_for_status()
            return r.json()["index"], r.json()["probability"]

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--checkpoint", default="models/default/checkpoint.pt")
    p.add_argument("--data-dir", default=None, help="where the test images are (see README)")
    args = p.parse_args(argv)
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost"):
        p.error("runs against 127.0.0.1 / localhost only")
    r = http_vs_torch(args.url, args.checkpoint, args.n, data_dir=args.data_dir)
    print(f"{r['n']} {r['dataset']} test images: HTTP accuracy {r['http_accuracy']:.4f}, "
          f"PyTorch eval-mode accuracy {r['torch_accuracy']:.4f}, "
          f"{r['disagreements']} images answered differently, max top-1 probability "
          f"difference {r['max_prob_diff']:.2g}")
    return 0 if r["disagreements"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
