"""One-Euro filtering of coefficient tracks (Casiez et al., CHI 2012).

A low-pass filter whose cutoff rises with the signal's speed: still faces are steadied, fast
motion is not lagged. Each channel's speed is measured in units of that channel's own noise
level (estimated robustly from its second differences, which noise dominates), so one ``beta``
suits angles in degrees and blendshape weights alike, and motion that stands clear of the noise
passes through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OneEuroConfig:
    """Cutoffs in Hz; ``beta`` is unit-free (see the module docstring)."""

    min_cutoff: float = 1.0
    beta: float = 1.0
    derivative_cutoff: float = 1.0


def _alpha(cutoff: np.ndarray | float, fps: float) -> np.ndarray:
    tau = 1.0 / (2.0 * np.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau * fps)


def one_euro_filter(signal: np.ndarray, fps: float, config: OneEuroConfig | None = None) -> np.ndarray:
    """Filter a ``(T, C)`` track sampled at ``fps``; returns a new array of the same shape."""
    cfg = config or OneEuroConfig()
    x = np.asarray(signal, dtype=np.float64)
    if len(x) < 2:
        return x.copy()
    # Robust noise std per channel: white noise of std s gives second differences of std s*sqrt(6).
    noise = 1.4826 * np.median(np.abs(np.diff(x, 2, axis=0)), axis=0) / np.sqrt(6.0) if len(x) > 2 else 0.0
    noise_speed = np.maximum(noise, 1e-6 * (np.abs(x).max(0) + 1.0)) * fps
    out = np.empty_like(x)
    out[0] = x[0]
    speed = np.zeros(x.shape[1:])
    a_d = _alpha(cfg.derivative_cutoff, fps)
    for i in range(1, len(x)):
        speed = a_d * (x[i] - out[i - 1]) * fps + (1.0 - a_d) * speed
        cutoff = cfg.min_cutoff + cfg.beta * np.abs(speed) / noise_speed
        a = _alpha(cutoff, fps)
        out[i] = a * x[i] + (1.0 - a) * out[i - 1]
    return out
