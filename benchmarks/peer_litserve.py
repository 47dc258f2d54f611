"""LitServe's LitAPI for the benchmark peer (benchmarks/peers.py): a module of its own because
LitServe pickles the API into its inference worker process, and because it imports litserve."""

from __future__ import annotations

import litserve as ls
import numpy as np

from serving.settings import Settings
from serving.upload import model_input

from .peer_common import classifier


class Classify(ls.LitAPI):
    """decode_request prepares one upload; batch/predict/unbatch run ONNX Runtime on a batch."""

    def setup(self, device):
        self.max_pixels = Settings.from_env().max_pixels
        self.clf = classifier()
        self.clf.warm_up((1, 64))

    def decode_request(self, request):
        return model_input(request["image"].file.read(), self.clf.info, self.max_pixels).x

    def batch(self, inputs):
        return np.concatenate(inputs)

    def predict(self, x):
        return self.clf(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, logits):
        from serving.model import answer

        return answer(logits, self.clf.info.classes)
