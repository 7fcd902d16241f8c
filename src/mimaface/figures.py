"""Figures written as PNG: labelled image grids (validation, evaluation, the demo) and loss curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mimaface.files import atomic_output

_PAD = 2
_LABEL = 14


def image_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, *, column_labels: Sequence[str] | None = None,
               row_labels: Sequence[str] | None = None, title: str | None = None, min_tile: int = 128) -> None:
    """Write rows of (H, W, 3) uint8 tiles as one labelled PNG; small tiles are enlarged (nearest)."""
    h, w = rows[0][0].shape[:2]
    zoom = max(1, -(-min_tile // max(h, w)))
    th, tw = h * zoom, w * zoom
    left = 8 + 7 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = (_LABEL if title else 0) + (_LABEL if column_labels else 0)
    columns = max(len(r) for r in rows)
    canvas = Image.new("RGB", (left + columns * (tw + _PAD) + _PAD, top + len(rows) * (th + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, 1), title, fill="black")
    for c, label in enumerate(column_labels or []):
        draw.text((left + _PAD + c * (tw + _PAD), top - _LABEL + 1), label, fill="black")
    for r, row in enumerate(rows):
        y = top + _PAD + r * (th + _PAD)
        if row_labels:
            draw.text((4, y + th // 2 - 6), row_labels[r], fill="black")
        for c, tile in enumerate(row):
            image = Image.fromarray(np.ascontiguousarray(tile)).resize((tw, th), Image.NEAREST)
            canvas.paste(image, (left + _PAD + c * (tw + _PAD), y))
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")


def loss_curve(history: dict[str, list[tuple[int, float]]], path: str | Path, title: str) -> None:
    """Plot each logged series (raw and smoothed) against the step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: np.array(points, dtype=np.float64) for name, points in history.items() if points}
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.6), squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items()):
        steps, values = points[:, 0], points[:, 1]
        ax.plot(steps, values, color="tab:blue", alpha=0.3, lw=0.8, label="logged")
        window = max(1, len(values) // 25)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=1.8, label=f"mean of {window}")
        ax.set_title(name)
        ax.set_xlabel("step")
        if (values > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
