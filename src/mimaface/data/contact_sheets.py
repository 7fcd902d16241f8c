"""Contact sheets (PNG grids) of any clip-store data set: SynthTalk or preprocessed videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimaface.data.clipstore import SPLITS, list_clips, read_dataset_info
from mimaface.errors import InputError
from mimaface.media import write_image


def _grid(images: list[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = image
    return sheet


def make_contact_sheets(root: str | Path, output_dir: str | Path, *, identities: int = 16) -> list[Path]:
    """PNG contact sheets of a data set: ``identities.png`` (the middle frame of the first clip of up
    to ``identities`` identities) and ``clip_<identity>_<clip>.png`` (frames of the first clip over
    their I_R renders). Returns the paths written."""
    root, output_dir = Path(root), Path(output_dir)
    read_dataset_info(root)
    clips = [c for split in SPLITS for c in list_clips(root, split)]
    if not clips:
        raise InputError(f"{root}: the data set has no clips yet")
    first: dict[str, object] = {}
    for ref in sorted(clips, key=lambda c: (c.identity, c.clip)):
        first.setdefault(ref.identity, ref)
    chosen = list(first.values())[: max(1, identities)]
    faces = []
    for ref in chosen:
        frames = ref.frames()
        faces.append(np.asarray(frames[len(frames) // 2]))
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "identities.png"]
    write_image(paths[0], _grid(faces, int(np.ceil(np.sqrt(len(faces))))))
    ref = chosen[0]
    frames, renders = ref.frames(), ref.renders()
    picks = np.unique(np.linspace(0, len(frames) - 1, min(8, len(frames))).round().astype(int))
    sheet = _grid([np.asarray(frames[i]) for i in picks] + [np.asarray(renders[i]) for i in picks], len(picks))
    paths.append(output_dir / f"clip_{ref.identity}_{ref.clip}.png")
    write_image(paths[1], sheet)
    return paths
