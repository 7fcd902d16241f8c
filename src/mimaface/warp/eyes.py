"""Irises that follow the gaze inside the warped eye openings.

The mesh warp alone moves an eye's content with its lids (a blink collapses the eye fan and the
lid skin stretches over it), but it cannot turn the eye: the iris would stay where the warp puts
it. So, per eye and frame, where the face model puts the target iris (landmarks 468-477: a centre
and two radii, the disc's projection) differs from where the warp carries the source's iris, the
pixels inside the target eye opening are repainted from two textures made once per source, each
a patch of the source around the eye:

* the **iris texture**: the source, with the part of the iris disc hidden under its lids filled
  with the visible iris's mean colour at the same radius. It is mapped from the source disc onto
  the target disc (centre translated, disc axes mapped, so the iris also foreshortens and rolls
  with the head) and drawn where the target disc covers the pixel, faded out over the pixel
  next to the lids, so the lids clip it;
* the **sclera texture**: the source, with its iris (and the ring around it) replaced row by row
  by the sclera to its left and right (linearly between them; the median sclera colour where a
  row has none). Source iris pixels that the warp still brings in outside the target disc are
  read from it, so the white of the eye closes behind a moved iris.

The repaint is blended in by how far the iris moved relative to the warp (fully from
``shift_full`` iris radii on), so a frame whose gaze equals the source's, or one where the iris
moves with the head, keeps exactly the warped source. Only pixels of the target eye openings
are touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mimaface.warp.mesh import IRIS_CENTRES, MAT_EYE_LEFT, MAT_EYE_RIGHT, WarpMesh
from mimaface.warp.pixels import PixelSet

DEFAULT_SCLERA = np.array([0.86, 0.83, 0.8])
DEFAULT_IRIS = np.array([0.3, 0.2, 0.12])
_IRIS_BANDS = 4  # radial bands of the iris fill
_MIN_OPENING_PIXELS = 6  # a source eye with fewer visible pixels has no iris to move
_LIMBUS = 1.25  # the sclera texture replaces the iris out to this many (scaled) iris radii
LASH_HALF_WIDTH = 0.005  # half the width of a shut eye's lash line (model units)
LASH_OPACITY = 0.85


def iris_frames(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Iris centres (...,2,2) and disc axes (...,2,2,2) (columns: the two radii) of both eyes
    (left first) from 478 landmarks (...,478,3) in normalised coordinates."""
    centres, axes = [], []
    for centre in IRIS_CENTRES:
        c = landmarks[..., centre, :2]
        a = landmarks[..., centre + 1, :2] - c
        b = landmarks[..., centre + 2, :2] - c
        centres.append(c)
        axes.append(np.stack([a, b], -1))
    return np.stack(centres, -2), np.stack(axes, -3)


def inverse_2x2(matrices: np.ndarray) -> np.ndarray:
    """Inverses of (..., 2, 2) matrices in closed form. (LAPACK's, beside torch's busy threads, took
    0.15 to 7 ms a call waking OpenBLAS's own pool: a tenth of a 512 px frame.)"""
    a, b, c, d = matrices[..., 0, 0], matrices[..., 0, 1], matrices[..., 1, 0], matrices[..., 1, 1]
    adjugate = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2)
    return adjugate / (a * d - b * c)[..., None, None]


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


@dataclass
class _Patch:
    """Textures over a box of the source crop, sampled at normalised source coordinates."""

    top: int
    left: int
    textures: torch.Tensor  # (1,C,h,w)
    size: int  # the crop's side

    def sample(self, xy: torch.Tensor, channels: slice) -> torch.Tensor:
        """(P,c) bilinear samples of ``channels`` at normalised points ``xy`` (P,2)."""
        h, w = self.textures.shape[-2:]
        col = (xy[:, 0] + 1.0) * (self.size / 2.0) - self.left  # pixel-edge units within the patch
        row = (1.0 - xy[:, 1]) * (self.size / 2.0) - self.top
        grid = torch.stack([2.0 * col / w - 1.0, 2.0 * row / h - 1.0], 1).view(1, 1, -1, 2)
        out = F.grid_sample(self.textures[:, channels], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out[0, :, 0].t()


class EyePainter:
    """Per source: its irises and the eye textures; per frame: repaints moved irises."""

    def __init__(self, mesh: WarpMesh, image: np.ndarray, source: PixelSet, *, iris_scale: float = 1.1,
                 shift_full: float = 0.25, device: torch.device | str = "cpu") -> None:
        """``image`` (S,S,3) float in [0, 1]; ``source``: the source's eye-opening pixels (one frame)."""
        self.mesh = mesh
        self.iris_scale = float(iris_scale)
        self.shift_full = float(shift_full)
        self.size = image.shape[0]
        self.device = torch.device(device)
        centres, axes = iris_frames(mesh.source[None, :478])
        self.centre, self.axes = centres[0], axes[0]  # (2,2), (2,2,2)
        self.usable = np.zeros(2, bool)
        self.patches: list[_Patch | None] = [None, None]
        self._fan_corners = np.zeros((2, 3), np.int64)
        self._fan_weights = np.zeros((2, 3))
        flat = source.flat.cpu().numpy()
        tri = source.tri.cpu().numpy()
        self.lash = self._lash_colours(image)
        for e, material in enumerate((MAT_EYE_LEFT, MAT_EYE_RIGHT)):
            opening = flat[mesh.material[tri] == material]
            self.usable[e] = len(opening) >= _MIN_OPENING_PIXELS
            if self.usable[e]:
                self.patches[e] = self._textures(image, opening, e)
            # Where the warp carries the source iris centre: its barycentrics in the source eye fan.
            fan = mesh.faces[mesh.material == material]
            bary = _barycentric(mesh.source[fan, :2], self.centre[e])
            best = int(np.argmax(bary.min(1)))
            weights = np.clip(bary[best], 0.0, None)
            self._fan_corners[e], self._fan_weights[e] = fan[best], weights / weights.sum()

    def _textures(self, image: np.ndarray, opening: np.ndarray, eye: int) -> _Patch:
        """The iris and sclera textures (see the module notes) over a box around eye ``eye``."""
        size = self.size
        centre, axes = self.centre[eye], self.axes[eye]
        rows, cols = np.divmod(opening, size)
        c_col, c_row = (centre[0] + 1.0) * size / 2.0 - 0.5, (1.0 - centre[1]) * size / 2.0 - 0.5
        reach = _LIMBUS * self.iris_scale * np.abs(axes).sum(1) * size / 2.0  # disc half-extent (x, y) in px
        top = int(max(0, min(rows.min(), np.floor(c_row - reach[1])) - 2))
        bottom = int(min(size, max(rows.max() + 1, np.ceil(c_row + reach[1]) + 1) + 2))
        left = int(max(0, min(cols.min(), np.floor(c_col - reach[0])) - 2))
        right = int(min(size, max(cols.max() + 1, np.ceil(c_col + reach[0]) + 1) + 2))
        patch = image[top:bottom, left:right].astype(np.float64)
        h, w = patch.shape[:2]
        inside = np.zeros((h, w), bool)
        inside[rows - top, cols - left] = True
        rr, cc = np.mgrid[top:bottom, left:right]
        xy = np.stack([(2.0 * cc + 1.0) / size - 1.0, 1.0 - (2.0 * rr + 1.0) / size], -1)
        radius = np.linalg.norm((xy - centre) @ inverse_2x2(axes).T, axis=-1) / self.iris_scale

        # Iris: the hidden part of the disc filled by radial bands of the visible part.
        iris = patch.copy()
        visible = inside & (radius <= 1.0)
        band = np.minimum((radius * _IRIS_BANDS).astype(int), _IRIS_BANDS - 1)
        fill = np.tile(patch[visible].mean(0) if visible.any() else DEFAULT_IRIS, (_IRIS_BANDS, 1))
        for k in range(_IRIS_BANDS):
            if (visible & (band == k)).sum() >= 3:
                fill[k] = patch[visible & (band == k)].mean(0)
        hidden = ~inside & (radius <= 1.0)
        iris[hidden] = fill[band[hidden]]

        # Sclera: each row's iris span replaced by the sclera either side of it.
        sclera = patch.copy()
        white = inside & (radius > _LIMBUS)
        if white.sum() >= _MIN_OPENING_PIXELS:
            lum = _luminance(patch)
            white &= lum >= 0.7 * np.median(lum[white])  # not lashes or corner shadows
        flat_colour = np.median(patch[white], 0) if white.sum() >= _MIN_OPENING_PIXELS else \
            DEFAULT_SCLERA * float(image.mean()) / 0.5
        cover = inside & (radius <= _LIMBUS)
        columns = np.arange(w)
        for r in np.nonzero(cover.any(1))[0]:
            known = np.nonzero(white[r])[0]
            todo = np.nonzero(cover[r])[0]
            if len(known) == 0:
                sclera[r, todo] = flat_colour
                continue
            for ch in range(3):
                sclera[r, todo, ch] = np.interp(columns[todo], known, patch[r, known, ch])
        # Rows were filled independently: soften the fill across rows.
        blurred = sclera.copy()
        blurred[1:-1] = (sclera[:-2] + sclera[1:-1] + sclera[2:]) / 3.0
        sclera[cover] = blurred[cover]
        textures = np.concatenate([iris, sclera], -1).transpose(2, 0, 1)[None]
        return _Patch(top, left, torch.as_tensor(textures, dtype=torch.float32, device=self.device), size)

    def _lash_colours(self, image: np.ndarray) -> np.ndarray:
        """(2,3) the colour of each eye's lash line: the darker third of the band just above its upper rim."""
        mesh, size = self.mesh, self.size
        out = np.empty((2, 3))
        for e, upper in enumerate(mesh.openings.eye_upper):
            rim = np.isin(mesh.lid_rim, upper)
            a, b = mesh.source[mesh.lid_rim[rim], :2], mesh.source[mesh.lid_out[rim], :2]
            points = np.concatenate([a + t * (b - a) for t in (0.1, 0.25, 0.4)])
            col = np.clip(np.round((points[:, 0] + 1.0) * size / 2.0 - 0.5).astype(int), 0, size - 1)
            row = np.clip(np.round((1.0 - points[:, 1]) * size / 2.0 - 0.5).astype(int), 0, size - 1)
            colours = image[row, col].astype(np.float64)
            lum = _luminance(colours)
            out[e] = np.median(colours[lum <= np.quantile(lum, 1.0 / 3.0)], 0)
        return out

    def lashes(self, frames: torch.Tensor, target: np.ndarray, pulled: np.ndarray, scale: np.ndarray) -> None:
        """Draw the lash line of lids pulled shut along the target upper rim, in ``frames`` (B,S,S,3) in
        place: ``target`` (B,V,3) vertices, ``pulled`` (B,468) from the mesh, ``scale`` (B,) the poses'."""
        mesh, size, device = self.mesh, self.size, frames.device
        for e, (upper, corners) in enumerate(zip(mesh.openings.eye_upper, mesh.openings.eye_corners)):
            closure = pulled[:, upper].max(1)
            line = np.concatenate([corners[:1], upper, corners[1:]])
            for b in np.nonzero(closure > 0)[0]:
                points = _smooth_curve(target[b, line, :2])
                px = np.stack([(points[:, 0] + 1.0) * size / 2.0, (1.0 - points[:, 1]) * size / 2.0], 1)
                half = LASH_HALF_WIDTH * scale[b] * size / 2.0
                lo = np.floor(px.min(0) - half - 2).astype(int).clip(0, size)
                hi = np.ceil(px.max(0) + half + 2).astype(int).clip(0, size)
                if (hi <= lo).any():
                    continue
                rows, cols = torch.meshgrid(torch.arange(lo[1], hi[1], device=device),
                                            torch.arange(lo[0], hi[0], device=device), indexing="ij")
                centre = torch.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 1, 2).float()
                a = torch.as_tensor(px[:-1], dtype=torch.float32, device=device)
                d = torch.as_tensor(px[1:] - px[:-1], dtype=torch.float32, device=device)
                t = (((centre - a) * d).sum(-1) / (d * d).sum(-1).clamp(min=1e-9)).clamp(0.0, 1.0)
                distance = torch.linalg.vector_norm(centre - (a + t[..., None] * d), dim=-1).min(1).values
                alpha = (LASH_OPACITY * float(closure[b]) * (half + 0.5 - distance).clamp(0.0, 1.0))[:, None]
                region = frames[b, lo[1]:hi[1], lo[0]:hi[0]].reshape(-1, 3)
                lash = torch.as_tensor(self.lash[e], dtype=torch.float32, device=device)
                frames[b, lo[1]:hi[1], lo[0]:hi[0]] = (region + alpha * (lash - region)).view(*rows.shape, 3)

    def strengths(self, target: np.ndarray) -> np.ndarray:
        """How much to repaint each eye (B,2) in [0, 1]: how far the target iris is (in iris radii)
        from where the warp carries the source's, over ``shift_full``; 0 for eyes with nothing to move.
        ``target``: (B,V,3) target warp-mesh vertices."""
        centres, axes = iris_frames(target[:, :478])
        out = np.zeros((len(target), 2))
        for e in range(2):
            if self.usable[e]:
                carried = np.einsum("k,bkd->bd", self._fan_weights[e], target[:, self._fan_corners[e], :2])
                radius = np.linalg.norm(axes[:, e, :, 0], axis=-1)
                shift = np.linalg.norm(centres[:, e] - carried, axis=-1) / np.maximum(radius, 1e-9)
                out[:, e] = np.clip(shift / self.shift_full, 0.0, 1.0)
        return out

    def paint(self, pixels: PixelSet, colours: torch.Tensor, source_xy: torch.Tensor, target: np.ndarray,
              strengths: np.ndarray) -> None:
        """Repaint moved irises in ``colours`` (P,3) in place: ``pixels`` of the target eye openings
        (and maybe others), ``source_xy`` (P,2) where the warp samples each of them, ``target``
        (B,V,3) the target mesh, ``strengths`` (B,2) from :meth:`strengths`."""
        centres, axes = iris_frames(target[:, :478])  # (B,2,2), (B,2,2,2)
        device = colours.device

        def per_frame(values: np.ndarray, batch: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float32, device=device)[batch]

        material = torch.as_tensor(self.mesh.material, device=device)[pixels.tri]
        for e, mat in enumerate((MAT_EYE_LEFT, MAT_EYE_RIGHT)):
            strength = strengths[:, e]
            if not strength.any():
                continue
            index = torch.nonzero((material == mat) & per_frame(strength > 0, pixels.batch).bool()).squeeze(1)
            if len(index) == 0:
                continue
            batch = pixels.batch[index]
            xy, q, base = pixels.xy[index], source_xy[index], colours[index]
            # Target disc: each pixel's iris coordinates and the disc's coverage (one-pixel soft edge).
            inverse = per_frame(inverse_2x2(axes[:, e]), batch)
            rel_t = torch.einsum("pij,pj->pi", inverse, xy - per_frame(centres[:, e], batch))
            radius_px = per_frame(np.linalg.norm(axes[:, e, :, 0], axis=-1) * self.size / 2.0, batch)
            cover_t = ((self.iris_scale - torch.linalg.vector_norm(rel_t, dim=1)) * radius_px + 0.5).clamp(0.0, 1.0)
            cover_t = cover_t * self._rim_fade(pixels.bary[index], pixels.tri[index], batch, target, mat)
            # The source iris at those iris coordinates.
            at = torch.as_tensor(self.centre[e], dtype=torch.float32, device=device) \
                + rel_t @ torch.as_tensor(self.axes[e], dtype=torch.float32, device=device).t()
            patch = self.patches[e]
            iris = patch.sample(at, slice(0, 3))
            # Source iris pixels the warp brings in: read from the sclera texture instead.
            rel_s = (q - torch.as_tensor(self.centre[e], dtype=torch.float32, device=device)) \
                @ torch.as_tensor(inverse_2x2(self.axes[e]).T, dtype=torch.float32, device=device)
            px_s = float(np.linalg.norm(self.axes[e][:, 0]) * self.size / 2.0)
            cover_s = (_LIMBUS * self.iris_scale - torch.linalg.vector_norm(rel_s, dim=1)) * px_s + 0.5
            cover_s = cover_s.clamp(0.0, 1.0)
            cleared = base + cover_s[:, None] * (patch.sample(q, slice(3, 6)) - base)
            moved = cleared + cover_t[:, None] * (iris - cleared)
            colours[index] = base + per_frame(strength, batch)[:, None] * (moved - base)

    def _rim_fade(self, bary: torch.Tensor, tri: torch.Tensor, batch: torch.Tensor, target: np.ndarray,
                  material: int) -> torch.Tensor:
        """(P,) 0 on an eye fan's rim edge rising to 1 one pixel inside: the lids clip the iris softly."""
        fan = np.nonzero(self.mesh.material == material)[0]
        corners = target[:, self.mesh.faces[fan], :2]  # (B,T,3,2): rim, next rim, centre
        rim = corners[:, :, 1] - corners[:, :, 0]
        to_centre = corners[:, :, 2] - corners[:, :, 0]
        area2 = np.abs(rim[..., 0] * to_centre[..., 1] - rim[..., 1] * to_centre[..., 0])
        height_px = area2 / np.maximum(np.linalg.norm(rim, axis=-1), 1e-12) * self.size / 2.0  # centre to rim
        table = np.zeros((len(target), len(self.mesh.faces)))
        table[:, fan] = height_px
        height = torch.as_tensor(table, dtype=torch.float32, device=bary.device)[batch, tri]
        return (bary[:, 2] * height).clamp(0.0, 1.0)


def _smooth_curve(points: np.ndarray, count: int = 24) -> np.ndarray:
    """``count`` points along the least-squares parabola through ``points`` (N,2), ends kept, along
    the line between the first and the last point."""
    a, b = points[0], points[-1]
    axis = (b - a) / max(float(np.linalg.norm(b - a)), 1e-12)
    normal = np.array([-axis[1], axis[0]])
    u, v = (points - a) @ axis, (points - a) @ normal
    weight = np.ones(len(points))
    weight[[0, -1]] = 10.0
    coef = np.polyfit(u, v, 2, w=weight)
    t = np.linspace(u[0], u[-1], count)
    return a + t[:, None] * axis + np.polyval(coef, t)[:, None] * normal


def _barycentric(triangles: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (T,3) of a 2D ``point`` in each of ``triangles`` (T,3,2)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    v0, v1, v2 = b - a, c - a, point - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-15, 1e-15, den)
    beta = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    gamma = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    return np.stack([1.0 - beta - gamma, beta, gamma], 1)
