"""Training-time augmentation for what users send (issue 20): drawings, icons, emoji and photos
differ from the dataset's images by direction, size, position, angle, stroke thickness,
contrast, filled vs outlined shapes, and the service's own photo conversion. Every transform
works on a uint8 batch (N, C, H, W) on the data's device and keeps the dataset's form (light
object on a black background), so the model still sees what the dataset looks like on the
rest of the batch.

The knobs (and their defaults) are declared once, in the classifier's config
(training/classifier.py); ``augment_batch`` takes them as keyword arguments.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from serving.conversions import fashion_mnist_pipeline, mnist_pipeline

# The service's photo conversions by input_convention pipeline (serving/conversions.py).
PHOTO_PIPELINES = {"fashion-mnist": fashion_mnist_pipeline, "mnist": mnist_pipeline}
# Shape styles and their shares among augmented images: as stored, outlined (an icon's stroke
# drawing of the silhouette), filled (a flat one-colour silhouette), thicker or thinner strokes.
STYLES = ("same", "outline", "filled", "dilate", "erode")


def dilate(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Grey-level dilation (max over a k x k window): light strokes grow by (k - 1) / 2 pixels."""
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


def erode(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Grey-level erosion (min over a k x k window); the canvas edge counts as background."""
    return -F.max_pool2d(-F.pad(x, (k // 2,) * 4), k, stride=1)


def outline(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """The morphological gradient (dilate - erode) of the filled silhouette, rescaled so each
    image's brightest pixel is 1: an outline drawing of the shape, as line icons are."""
    sil = filled(x)
    edge = dilate(sil, k) - erode(sil, k)
    return edge / edge.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def filled(x: torch.Tensor, threshold: float = 0.08) -> torch.Tensor:
    """A flat silhouette: every pixel above ``threshold`` becomes 1, then a closing (dilate then
    erode) fills the small gaps between stitched parts."""
    return erode(dilate((x > threshold).to(x.dtype)))


def gamma(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Contrast: ``x ** g`` per image (g (N,) > 0), then stretched back to a brightest pixel of 1
    (every dataset image and every converted photo has one)."""
    y = x.clamp_min(0).pow(g.view(-1, 1, 1, 1))
    return y / y.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def affine(x: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
           mirror: torch.Tensor) -> torch.Tensor:
    """Rotate (degrees, (N,)), scale (N,), shift ((N, 2) in pixels, x then y) and mirror (bool
    (N,)) each image about its centre; bilinear, black outside."""
    n, _, h, w = x.shape
    a = degrees * (math.pi / 180.0)
    sx = torch.where(mirror, -1.0, 1.0) / scale  # the grid maps output to input coordinates
    sy = 1.0 / scale
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a) * sx, -torch.sin(a) * sy
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a) * sx, torch.cos(a) * sy
    theta[:, 0, 2] = -2.0 * shift[:, 0] / w
    theta[:, 1, 2] = -2.0 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def low_resolution(x: torch.Tensor, side: int) -> torch.Tensor:
    """Down to ``side`` x ``side`` (area average) and back up (bilinear): a small scan or
    thumbnail blown up to the model's size."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(side, side), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def photo_round_trip(x_u8: np.ndarray, pipeline: str, upscale: int = 4) -> np.ndarray:
    """What the service makes of a render of these images as a photo or icon on white: each
    uint8 (H, W) image is upscaled, negated (dark object on a white background) and sent
    through serving's own conversion. uint8 (N, H, W) in, uint8 (N, H, W) out."""
    convert = PHOTO_PIPELINES[pipeline]
    out = np.empty_like(x_u8)
    for i, img in enumerate(x_u8):
        big = np.kron(img.astype(np.float32), np.ones((upscale, upscale), np.float32))
        big = _box_smooth(big, upscale)
        out[i] = convert(255.0 - big, img.shape[0], img.shape[1])
    return out


def _box_smooth(a: np.ndarray, k: int) -> np.ndarray:
    """A k x k box average (nearest-neighbour upscale -> roughly bilinear), edges clamped."""
    p = np.pad(a, ((k // 2, k - 1 - k // 2),) * 2, mode="edge")
    c = p.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = a.shape
    return (c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]) / (k * k)


def augment_batch(images: torch.Tensor, gen: torch.Generator, *, fraction: float, mirror: bool,
                  degrees: float, scale: tuple[float, float], shift: float, gamma_range: float,
                  style: float, photo: float, pipeline: str | None, lowres: float = 0.0) -> torch.Tensor:
    """Augment a random ``fraction`` of a uint8 (N, C, H, W) batch; the rest is returned as is.

    Each augmented image: mirrored with probability 1/2 (if ``mirror``), one shape style with
    probability ``style`` (outline, filled, dilate or erode, equally likely), contrast
    ``x ** g`` with log g uniform in +-``gamma_range``, rotated by up to +-``degrees``, scaled
    by a factor uniform in ``scale``, shifted by up to +-``shift`` pixels; with probability
    ``lowres`` brought down to 7..14 pixels a side and back (a small scan); then, with
    probability ``photo``, sent through the service's photo conversion (``pipeline``).
    ``gen``: a CPU generator (the draws are reproducible from the run's seed)."""
    n = images.shape[0]
    k = int(round(fraction * n))
    if k == 0:
        return images
    dev = images.device
    idx = torch.randperm(n, generator=gen)[:k]

    def u(lo: float, hi: float, size: int = k) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(size, generator=gen)).to(dev)

    x = images.index_select(0, idx.to(dev)).float() / 255.0
    # shape style
    pick = torch.randint(1, len(STYLES), (k,), generator=gen).to(dev)
    pick = torch.where(u(0, 1) < style, pick, torch.zeros_like(pick))
    for s, fn in ((1, outline), (2, filled), (3, dilate), (4, erode)):
        rows = (pick == s).nonzero().flatten()
        if rows.numel():
            x[rows] = fn(x[rows])
    x = gamma(x, torch.exp(u(-gamma_range, gamma_range)))
    flip = (u(0, 1) < 0.5) if mirror else torch.zeros(k, dtype=torch.bool, device=dev)
    x = affine(x, u(-degrees, degrees), u(*scale), torch.stack([u(-shift, shift), u(-shift, shift)], 1), flip)
    rows = (u(0, 1) < lowres).nonzero().flatten()
    if rows.numel():
        side = int(torch.randint(7, 15, (1,), generator=gen))
        x[rows] = low_resolution(x[rows], side)
    out_u8 = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    if photo > 0 and pipeline in PHOTO_PIPELINES and out_u8.shape[1] == 1:
        rows = (torch.rand(k, generator=gen) < photo).nonzero().flatten()
        if rows.numel():
            conv = photo_round_trip(out_u8[rows.to(dev), 0].cpu().numpy(), pipeline)
            out_u8[rows.to(dev), 0] = torch.from_numpy(conv).to(dev)
    result = images.clone()
    result[idx.to(dev)] = out_u8
    return result
