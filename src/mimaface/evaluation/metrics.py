"""Image and video metrics: PSNR and clip-boundary consistency."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
    return {"boundary": at, "within": within, "ratio": at / within}


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray, peak: float = 255.0) -> float:
    """PSNR over the pixels where ``mask`` (images' shape without channels) is true."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.shape[: mask.ndim] != mask.shape:
        raise ValueError(f"shapes differ: {a.shape}, {b.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    mse = float(np.mean((a[mask] - b[mask]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)
