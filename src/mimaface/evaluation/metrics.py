"""Image and video metrics: PSNR, SSIM, clip-boundary consistency and colour drift across clips."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from scipy.ndimage import gaussian_filter


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio (dB) of two images or videos of one shape (uint8 by default)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change from each frame to the next, (N - 1,), in pixel units."""
    x = np.asarray(frames, np.float64)
    return np.abs(np.diff(x, axis=0)).reshape(len(x) - 1, -1).mean(1)


def boundary_consistency(frames: np.ndarray, clip_starts: Sequence[int]) -> dict[str, float]:
    """Frame-to-frame change where a new clip starts vs inside clips.

    ``clip_starts``: index of each clip's first new frame (the first is 0). The change into frame
    ``s`` (from ``s - 1``) counts as a boundary change for every later start ``s``. ``ratio`` near 1:
    no visible seams; much above 1: jumps at the seams.
    """
    changes = frame_changes(frames)
    boundary = np.zeros(len(changes), bool)
    for s in clip_starts[1:]:
        if 0 < s < len(frames):
            boundary[s - 1] = True
    if not boundary.any() or boundary.all():
        raise ValueError("need at least one clip boundary and one change inside a clip")
    at, within = float(changes[boundary].mean()), float(changes[~boundary].mean())
    # A video that never changes has no seams (ratio 1).
    ratio = at / within if within > 0 else (1.0 if at == 0 else float("inf"))
    return {"boundary": at, "within": within, "ratio": ratio}


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray, peak: float = 255.0) -> float:
    """PSNR over the pixels where ``mask`` (images' shape without channels) is true."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.shape[: mask.ndim] != mask.shape:
        raise ValueError(f"shapes differ: {a.shape}, {b.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    mse = float(np.mean((a[mask] - b[mask]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004) of two images or videos (..., H, W, 3).

    Gaussian window (sigma 1.5, 11 x 11), K1 = 0.01, K2 = 0.03, per channel, borders of half a
    window left out, averaged over channels and frames: scikit-image's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"need two images or videos of one shape (..., H, W, C), got {a.shape} and {b.shape}")
    sigma, truncate = 1.5, 3.5
    pad = int(truncate * sigma + 0.5)
    if min(a.shape[-3:-1]) <= 2 * pad:
        raise ValueError(f"images of {a.shape[-3:-1]} are too small for an 11 x 11 SSIM window")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    spatial = [0] * (a.ndim - 3) + [sigma, sigma, 0]  # filter over H and W only

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, spatial, truncate=truncate)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s[..., pad:-pad, pad:-pad, :].mean())


def colour_drift(frames: np.ndarray, clip_starts: Sequence[int]) -> dict[str, float]:
    """How far each clip's mean colour moves: per clip (from its first new frame to the next
    clip's), the mean RGB; ``max_from_first``: the largest distance (RGB units, Euclidean) of a
    clip's mean from the first clip's; ``mean_step``: the mean distance between consecutive clips."""
    x = np.asarray(frames, np.float64)
    bounds = [*clip_starts, len(x)]
    if len(clip_starts) < 2 or any(not 0 <= s < e <= len(x) for s, e in pairwise(bounds)):
        raise ValueError(f"need at least two non-empty clips, got starts {list(clip_starts)} for {len(x)} frames")
    means = np.stack([x[s:e].reshape(-1, x.shape[-1]).mean(0) for s, e in pairwise(bounds)])
    return {"max_from_first": float(np.linalg.norm(means - means[0], axis=1).max()),
            "mean_step": float(np.linalg.norm(np.diff(means, axis=0), axis=1).mean())}
