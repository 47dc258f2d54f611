"""Image preprocessing for the service, in plain NumPy + Pillow (no torch: the Bento ships
without it). Tests import these same functions to feed PyTorch, which is how "the service
answers as the PyTorch eval-mode model" is proven for real files."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalize_uint8(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (..., C, H, W) -> float32 ``x * (1 / (255 std)) + (-mean / std)``, with the exact
    float32 operations of ``training.data.Normalizer`` (bit-identical results)."""
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    c = len(mean)
    if pixels.ndim < 3 or pixels.shape[-3] != c:
        raise ValueError(f"expected (..., {c}, H, W) pixels, got shape {pixels.shape}")
    std32 = np.asarray(std, dtype=np.float32)
    scale = (np.float32(1.0) / (np.float32(255.0) * std32)).reshape(c, 1, 1)
    shift = (-np.asarray(mean, dtype=np.float32) / std32).reshape(c, 1, 1)
    return pixels.astype(np.float32) * scale + shift
