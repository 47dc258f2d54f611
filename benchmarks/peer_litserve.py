"""LitServe's LitAPI for the benchmark peer (benchmarks/peers.py): a module of its own because
LitServe pickles the API into its inference worker process, and because it imports litserve."""

from __future__ import annotations

import litserve as ls
import numpy as np

from .peers import _classifier, _prepare


class Classify(ls.LitAPI):
    """decode_request prepares one upload; batch/predict/unbatch run ONNX Runtime on a batch."""

    def setup(self, device):
        self.clf = _classifier()
        self.clf.warm_up((1, 64))

    def decode_request(self, request):
        return _prepare(self.clf, request["image"].file.read())

    def batch(self, inputs):
        return np.concatenate(inputs)

    def predict(self, x):
        return self.clf(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, logits):
        from serving.model import answer

        return answer(logits, self.clf.info.classes)
