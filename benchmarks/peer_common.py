"""What the benchmark peers (benchmarks/peers.py, benchmarks/peer_litserve.py) share: the
service's model as the service loads it, from the same settings (serving/settings.py)."""

from __future__ import annotations

from serving.model import OnnxClassifier
from serving.settings import Settings


def classifier(settings: Settings | None = None) -> OnnxClassifier:
    """The ONNX Runtime session the service would run (BNSERVE_MODEL, provider, threads, spin)."""
    s = settings or Settings.from_env()
    return OnnxClassifier(s.model, s.provider, s.ort_threads, spin=s.ort_spin)
