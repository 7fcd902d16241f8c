"""Covered pixels of a batch of renders, as flat lists, and per-pixel interpolation on them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimaface.face3d.render import Fragments, rasterize


@dataclass
class PixelSet:
    """Some covered pixels of a (B,S,S) batch: where they are and which triangle they show."""

    flat: torch.Tensor  # (P,) index into B*S*S
    batch: torch.Tensor  # (P,) frame of each pixel
    tri: torch.Tensor  # (P,) triangle index into the mesh's faces
    bary: torch.Tensor  # (P,3) barycentric coordinates
    xy: torch.Tensor  # (P,2) pixel centre in normalised image coordinates (x right, y up)
    size: int

    @classmethod
    def where(cls, fragments: Fragments, keep: torch.Tensor) -> PixelSet:
        """The pixels of ``fragments`` (B,S,S) whose triangle is marked in ``keep`` (F,) bool."""
        s = fragments.face_index.shape[-1]
        index = fragments.face_index.reshape(-1)
        covered = index >= 0
        flat = torch.nonzero(covered & keep[index.clamp(min=0)]).squeeze(1)
        return cls.of(flat, index[flat], fragments.bary.reshape(-1, 3)[flat], s)

    @classmethod
    def of(cls, flat: torch.Tensor, tri: torch.Tensor, bary: torch.Tensor, size: int) -> PixelSet:
        batch = torch.div(flat, size * size, rounding_mode="floor")
        in_image = flat - batch * size * size
        row = torch.div(in_image, size, rounding_mode="floor")
        col = in_image - row * size
        xy = torch.stack([(2.0 * col + 1.0) / size - 1.0, 1.0 - (2.0 * row + 1.0) / size], 1).float()
        return cls(flat, batch, tri, bary, xy, size)

    def __len__(self) -> int:
        return len(self.flat)

    def subset(self, mask: torch.Tensor) -> PixelSet:
        return PixelSet(self.flat[mask], self.batch[mask], self.tri[mask], self.bary[mask], self.xy[mask], self.size)

    def interpolate(self, attributes: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """(P,C) barycentric blend of per-vertex ``attributes`` (B,V,C) or (V,C) at these pixels."""
        corners = faces.index_select(0, self.tri)  # (P,3)
        if attributes.dim() == 3:
            corners = corners + (self.batch * attributes.shape[1])[:, None]
            attributes = attributes.reshape(-1, attributes.shape[-1])
        out = attributes.index_select(0, corners[:, 0]) * self.bary[:, 0:1]
        out += attributes.index_select(0, corners[:, 1]) * self.bary[:, 1:2]
        out += attributes.index_select(0, corners[:, 2]) * self.bary[:, 2:3]
        return out


def rasterize_window(vertices: torch.Tensor, faces: torch.Tensor, size: int) -> PixelSet:
    """The pixels of a (B,size,size) render that ``faces`` cover, rasterised only in their bounding box.

    ``vertices`` (B,V,3) in normalised coordinates of the whole image. The box is mapped onto a
    smaller image of the rasteriser (so it allocates and scans only the box); the pixel sets are
    the same as a whole-image raster's up to rounding. ``tri`` indexes ``faces``.
    """
    used = vertices[:, faces.reshape(-1)]
    col = (used[..., 0] + 1.0) * (size / 2.0)
    row = (1.0 - used[..., 1]) * (size / 2.0)
    left, right = max(0, int(col.min().floor())), min(size, int(col.max().ceil()) + 1)
    top, bottom = max(0, int(row.min().floor())), min(size, int(row.max().ceil()) + 1)
    device = vertices.device
    if right <= left or bottom <= top:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return PixelSet.of(empty, empty, torch.zeros((0, 3), device=device), size)
    height, width = bottom - top, right - left
    moved = vertices.clone()
    moved[..., 0] = (vertices[..., 0] * (size / 2.0) + (size / 2.0 - left - width / 2.0)) * (2.0 / height)
    moved[..., 1] = (vertices[..., 1] * (size / 2.0) - (size / 2.0 - top - height / 2.0)) * (2.0 / height)
    frags = rasterize(moved, faces, height, width)
    index = frags.face_index.reshape(-1)
    local = torch.nonzero(index >= 0).squeeze(1)
    frame = torch.div(local, height * width, rounding_mode="floor")
    rest = local - frame * height * width
    r = torch.div(rest, width, rounding_mode="floor")
    flat = frame * size * size + (top + r) * size + left + (rest - r * width)
    return PixelSet.of(flat, index[local], frags.bary.reshape(-1, 3)[local], size)
