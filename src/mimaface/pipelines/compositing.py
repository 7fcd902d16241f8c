"""Putting generated crops back into the source picture, and side-by-side frames."""

from __future__ import annotations

import numpy as np
from PIL import Image


def colour_transfer(generated: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel gain and offset that give ``generated``'s mean and spread those of ``reference``
    (both (..., 3) uint8). Computed once and applied to every frame, so the video does not flicker."""
    g = generated.reshape(-1, 3).astype(np.float64)
    r = reference.reshape(-1, 3).astype(np.float64)
    gain = r.std(0) / np.maximum(g.std(0), 1e-3)
    gain = np.clip(gain, 0.5, 2.0)  # a colour correction, not a relighting
    return gain, r.mean(0) - gain * g.mean(0)


def feather_mask(size: int, feather: float = 0.12) -> np.ndarray:
    """(size, size) float mask: 1 inside, falling smoothly to 0 over ``feather`` x size at the border."""
    ramp = max(1.0, feather * size)
    d = np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / ramp
    edge = np.clip(d, 0, 1)
    edge = edge * edge * (3 - 2 * edge)  # smoothstep
    return np.minimum(edge[:, None], edge[None, :])


def paste_back(image: np.ndarray, crop: np.ndarray, box: np.ndarray, *, gain: np.ndarray | None = None,
               offset: np.ndarray | None = None, feather: float = 0.12) -> np.ndarray:
    """The source ``image`` with ``crop`` (S, S, 3) resized into ``box`` (centre x, centre y, side), blended
    through a feathered mask, after the colour correction ``gain``/``offset``."""
    height, width = image.shape[:2]
    cx, cy, side = (float(v) for v in box)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    n = max(1, int(round(side)))
    tile = crop.astype(np.float64)
    if gain is not None:
        tile = tile * gain + offset
    tile = np.asarray(Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)).resize((n, n), Image.BICUBIC),
                      np.float64)
    mask = feather_mask(n, feather)[..., None]
    out = image.astype(np.float64)
    ys, xs = slice(max(y0, 0), min(y0 + n, height)), slice(max(x0, 0), min(x0 + n, width))
    ts = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    out[ys, xs] = mask[ts] * tile[ts] + (1 - mask[ts]) * out[ys, xs]
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def side_by_side(*panels: np.ndarray, height: int = 256) -> np.ndarray:
    """Panels (H_i, W_i, 3) or grey (H_i, W_i) scaled to one ``height`` and put next to each other."""
    out = []
    for panel in panels:
        panel = np.repeat(panel[..., None], 3, -1) if panel.ndim == 2 else panel
        width = max(1, round(panel.shape[1] * height / panel.shape[0]))
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(panel)).resize((width, height), Image.BICUBIC)))
    frame = np.concatenate(out, 1)
    return frame[:, : frame.shape[1] // 2 * 2]  # H.264 needs even sizes
