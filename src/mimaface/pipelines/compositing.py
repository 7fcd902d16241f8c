"""Putting generated crops back into the source picture, and side-by-side frames."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def colour_transfer(generated: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel gain and offset that give ``generated``'s mean and spread those of ``reference``
    (both (..., 3) uint8). Computed once and applied to every frame, so the video does not flicker."""
    g = generated.reshape(-1, 3).astype(np.float64)
    r = reference.reshape(-1, 3).astype(np.float64)
    gain = r.std(0) / np.maximum(g.std(0), 1e-3)
    gain = np.clip(gain, 0.5, 2.0)  # a colour correction, not a relighting
    return gain, r.mean(0) - gain * g.mean(0)


class PasteBack:
    """Pastes generated crops into the source picture through a face-shaped mask (colour-matched once).

    The mask of a frame is the union of the source's and the frame's face silhouettes (so the source's
    own face never shows through when the head moves), its holes (eyes, mouth) filled, extended upwards
    by ``hair`` for the forehead and hairline, dilated by ``dilate`` and feathered over ``feather``; it is
    built from a signed distance field upsampled to the paste resolution, so its edge is smooth however
    small the silhouettes are. It is also forced to 0 within ``border`` of the box edge (rising over
    ``feather``), so no box edge can show. Lengths are fractions of the box side. The colour correction
    (:func:`colour_transfer` to the source crop) is computed from the first crop passed and reused, so a
    video does not flicker.
    """

    def __init__(self, image: np.ndarray, box: np.ndarray, source_crop: np.ndarray, source_silhouette: np.ndarray,
                 *, dilate: float = 0.03, feather: float = 0.06, hair: float = 0.1, border: float = 0.02,
                 match_colour: bool = True) -> None:
        self.source_silhouette = np.asarray(source_silhouette) > 0
        if not self.source_silhouette.any():
            raise ValueError("the source silhouette is empty")
        self.image, self.source_crop = image, source_crop
        self.dilate, self.feather, self.hair = dilate, feather, hair
        # Without colour matching (crops made of the source's own pixels): the identity correction.
        self.gain: np.ndarray | None = None if match_colour else np.ones(3)
        self.offset: np.ndarray | None = None if match_colour else np.zeros(3)
        height, width = image.shape[:2]
        cx, cy, side = (float(v) for v in box)
        self.size = max(1, int(round(side)))
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        # the part of the box inside the picture, in picture and in box pixels
        self._picture = (slice(max(y0, 0), max(min(y0 + self.size, height), 0)),
                        slice(max(x0, 0), max(min(x0 + self.size, width), 0)))
        self._in_box = tuple(slice(s.start - o, s.stop - o) for s, o in zip(self._picture, (y0, x0)))
        edge = np.minimum(np.arange(self.size) + 0.5, self.size - np.arange(self.size) - 0.5) / self.size
        edge = _smoothstep((edge - border) / feather)
        self._edge = np.minimum(edge[:, None], edge[None, :])
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (silhouette, its mask): a still face reuses it

    def mask(self, silhouette: np.ndarray) -> np.ndarray:
        """The blending weight (side, side) in [0, 1] over the box for a frame's silhouette (S, S)."""
        silhouette = np.asarray(silhouette) > 0
        if self._last is not None and np.array_equal(self._last[0], silhouette):
            return self._last[1]
        union = self.source_silhouette | silhouette
        res = union.shape[0]
        face = union.copy()
        for shift in range(1, int(round(self.hair * res)) + 1):  # each face pixel also covers the rows above it
            face[:-shift] |= union[shift:]
        face = ndimage.binary_fill_holes(face)
        # signed distance to the silhouette's edge (pixel edges, not centres), in fractions of the side
        sdf = np.where(face, 0.5 - ndimage.distance_transform_edt(face), ndimage.distance_transform_edt(~face) - 0.5)
        sdf = Image.fromarray((sdf / res).astype(np.float32)).resize((self.size, self.size), Image.BILINEAR)
        mask = _smoothstep((self.dilate + self.feather - np.asarray(sdf, np.float64)) / self.feather) * self._edge
        self._last = (silhouette, mask)
        return mask

    def __call__(self, crop: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
        """The whole picture (H, W, 3) uint8 with ``crop`` (S, S, 3) uint8 pasted through ``silhouette``'s mask."""
        if self.gain is None:
            self.gain, self.offset = colour_transfer(crop, self.source_crop)
        tile = np.clip(crop * self.gain + self.offset, 0, 255).round().astype(np.uint8)
        tile = np.asarray(Image.fromarray(tile).resize((self.size, self.size), Image.BICUBIC), np.float64)
        mask = self.mask(silhouette)[self._in_box][..., None]
        out = self.image.copy()
        region = self.image[self._picture]
        out[self._picture] = (mask * tile[self._in_box] + (1 - mask) * region).round().astype(np.uint8)
        return out


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth S-curve in between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def side_by_side(*panels: np.ndarray, height: int = 256) -> np.ndarray:
    """Panels (H_i, W_i, 3) or grey (H_i, W_i) scaled to one ``height`` and put next to each other."""
    out = []
    for panel in panels:
        panel = np.repeat(panel[..., None], 3, -1) if panel.ndim == 2 else panel
        width = max(1, round(panel.shape[1] * height / panel.shape[0]))
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(panel)).resize((width, height), Image.BICUBIC)))
    frame = np.concatenate(out, 1)
    return frame[:, : frame.shape[1] // 2 * 2]  # H.264 needs even sizes
