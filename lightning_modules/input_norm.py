"""Per-sample intensity normalisation of U-Net inputs (`SegmentationModule(input_norm=...)`), applied to every
training patch and every sliding window alike; it is what lets raw real patches and [-1, 1] GAN patches be pooled."""

from __future__ import annotations

import torch


def zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample z-score over channels and space; a constant window maps to 0 rather than to inf."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dims, keepdim=True)
    std = x.std(dims, keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(eps)


def zscore_foreground(x: torch.Tensor, margin: float = 0.02, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample z-score whose mean and SD come from the foreground only: voxels more than `margin` of the sample's
    intensity range above its minimum. A skull-stripped window at the brain's edge is half background; counted in,
    the background drags the mean down and lifts ordinary tissue to vessel-like z values (false vessels along the
    brain surface). All voxels are mapped with those statistics (background goes strongly negative), so the map stays
    continuous in x. Written here rather than MONAI's `NormalizeIntensity(nonzero=True)`: batched on the device, and
    the GAN's background is ≈ −1, not 0. A sample without foreground (constant) falls back to all voxels."""
    dims = tuple(range(1, x.ndim))
    low, high = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    fg = x > low + margin * (high - low)
    fg = fg | ~fg.flatten(1).any(1).view(-1, *([1] * len(dims)))
    weight = fg.to(x.dtype)
    count = weight.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (x * weight).sum(dims, keepdim=True) / count
    std = ((x - mean).square() * weight).sum(dims, keepdim=True).div(count).sqrt()
    return (x - mean) / std.clamp_min(eps)


INPUT_NORMS = {"zscore": zscore, "zscore_foreground": zscore_foreground, "none": lambda x: x}
