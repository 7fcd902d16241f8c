"""The README figure of pasting back: a feathered square (before) against the face-shaped mask (after).

``python scripts/paste_back_figure.py`` animates scikit-image's astronaut with the bundled
``talk.json`` through the command line (``mimaface animate --crop``, the generated 64 px crops),
renders the silhouettes with :mod:`mimaface.face3d` and writes ``docs/paste_back.png``: the frame
where the head has moved most, pasted back both ways, each with a zoom on the box's edge.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import skimage.data
from matplotlib.patches import Rectangle
from PIL import Image

from mimaface.cli import main as cli_main
from mimaface.face3d.coefficients import load_motion
from mimaface.face3d.pipeline import render_motion
from mimaface.media import load_image, write_image
from mimaface.pipelines.compositing import PasteBack, colour_transfer
from mimaface.pipelines.retarget import retarget
from mimaface.pipelines.source import prepare_source

REPO = Path(__file__).resolve().parents[1]


def square_paste(image: np.ndarray, crop: np.ndarray, box: np.ndarray, gain: np.ndarray, offset: np.ndarray,
                 feather: float = 0.12) -> np.ndarray:
    """The replaced method, for the comparison only: the crop blended through a feathered square."""
    x0, y0 = int(round(box[0] - box[2] / 2)), int(round(box[1] - box[2] / 2))
    n = int(round(box[2]))
    tile = np.clip(crop * gain + offset, 0, 255).astype(np.uint8)
    tile = np.asarray(Image.fromarray(tile).resize((n, n), Image.BICUBIC), np.float64)
    d = np.clip(np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / (feather * n), 0, 1)
    d = d * d * (3 - 2 * d)
    mask = np.minimum(d[:, None], d[None, :])[..., None]
    out = image.astype(np.float64)  # the astronaut's box lies inside the picture
    out[y0:y0 + n, x0:x0 + n] = mask * tile + (1 - mask) * out[y0:y0 + n, x0:x0 + n]
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "paste_back.png")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    args = parser.parse_args()
    plt.switch_backend("Agg")  # a file, no window
    image = skimage.data.astronaut()
    driving = REPO / "src" / "mimaface" / "assets" / "talk.json"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_image(tmp / "astronaut.png", image)
        code = cli_main(["animate", "--engine", "diffusion", "--source", str(tmp / "astronaut.png"), "--driving", str(driving), "-o",
                         str(tmp / "out.mp4"), "--crop", "--frames-dir", str(tmp / "frames"), "--steps",
                         str(args.steps), "-q"])
        if code:
            raise SystemExit(code)
        crops = [load_image(path) for path in sorted((tmp / "frames").glob("frame_*.png"))]
    size = crops[0].shape[0]
    source = prepare_source(image, size)
    motion = retarget(source.coefficients, load_motion(driving))  # what animate rendered I_R from
    source_render = next(render_motion(source.coefficients, (size, size), progress=False))[0][..., 0]
    renders = [render[..., 0] for render, _ in render_motion(motion, (size, size), progress=False)]
    # the frame whose silhouette differs most from the source's
    i = int(np.argmax([np.sum((r > 0) != (source_render > 0)) for r in renders]))
    gain, offset = colour_transfer(crops[0], source.crop)
    before = square_paste(image, crops[i], source.box, gain, offset)
    paste_back = PasteBack(image, source.box, source.crop, source_render)
    paste_back(crops[0], renders[0])  # fixes the colour correction on the first frame, as animate does
    after = paste_back(crops[i], renders[i])

    cx, cy, side = source.box
    zoom = int(round(0.5 * side))  # the box's lower left corner: its left and bottom edges cross the neck
    zx, zy = int(round(cx - 0.55 * side)), int(round(cy + 0.05 * side))
    # the part of the picture around the box, shown in picture coordinates
    left, top = max(0, int(cx - 0.9 * side)), max(0, int(cy - 0.9 * side))
    right, bottom = min(image.shape[1], int(cx + 0.9 * side)), min(image.shape[0], int(cy + 0.9 * side))
    fig, axes = plt.subplots(2, 2, figsize=(8, 4 * (1 + (bottom - top) / (right - left))),
                             gridspec_kw={"height_ratios": [(bottom - top) / (right - left), 1]})
    for col, (title, picture) in enumerate((("before: feathered square", before), ("after: face-shaped mask", after))):
        axes[0, col].imshow(picture[top:bottom, left:right], extent=(left - 0.5, right - 0.5, bottom - 0.5, top - 0.5))
        axes[0, col].add_patch(Rectangle((zx, zy), zoom, zoom, fill=False, ec="red", lw=1.2))
        axes[0, col].set_title(title)
        axes[1, col].imshow(picture[zy:zy + zoom, zx:zx + zoom], interpolation="nearest")
        axes[1, col].set_title("zoom (red square)")
    axes[0, 0].add_patch(Rectangle((cx - side / 2, cy - side / 2), side, side, fill=False, ec="yellow", ls="--",
                                   lw=0.8))
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"the astronaut driven by talk.json, frame {i} (yellow: the crop box)")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output} (frame {i})")


if __name__ == "__main__":
    main()
