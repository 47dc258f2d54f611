"""The baseline of the serving benchmark: the BentoML service most users write first.

PyTorch eager in eval mode on the unfolded checkpoint (on the GPU when there is one), BentoML's own ``Image`` input (so a bad
image is BentoML's 500), preprocessing per request, no batching. Benchmark use only:
``bentoml serve benchmarks.naive_service:NaiveClassifier`` with ``BNSERVE_CHECKPOINT`` set.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
from PIL.Image import Image


@bentoml.service(name="naive_classifier", workers=1)
class NaiveClassifier:
    def __init__(self) -> None:
        import torch

        from training.checkpoint import load_checkpoint

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, ckpt = load_checkpoint(os.environ["BNSERVE_CHECKPOINT"])
        self.model = model.to(self.device)
        d, c = ckpt["data"], ckpt["model_config"]
        self.classes = d["classes"]
        self.size = (c["image_size"], c["image_size"])
        self.mode = "L" if c["in_channels"] == 1 else "RGB"
        self.mean = np.asarray(d["mean"], np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(d["std"], np.float32).reshape(-1, 1, 1)

    @bentoml.api
    def classify(self, image: Image) -> dict:
        img = image.convert(self.mode).resize(self.size)
        x = np.asarray(img, np.float32).reshape(len(self.mean), *self.size) / 255.0
        x = self.torch.from_numpy((x - self.mean) / self.std)[None].to(self.device)
        with self.torch.no_grad():
            probs = self.torch.softmax(self.model(x), 1)[0]
        i = int(probs.argmax())
        return {"label": self.classes[i], "index": i, "probability": float(probs[i])}
