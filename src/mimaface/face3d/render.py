"""A small vectorised z-buffer rasteriser in PyTorch, and the grey face renderer built on it.

Vertices are given in normalised image coordinates (:mod:`mimaface.face3d.camera`); the camera
is orthographic, so a vertex projects to its ``(x, y)`` and a larger ``z`` is closer.

How :func:`rasterize` works, with no Python loop over triangles or pixels:

1. *Triangle setup* (per batch element and triangle): the three edge functions, oriented so the
   inside is positive whatever the winding, and a conservative range of pixel rows.
2. *Row spans* (per triangle and row): the exact run of pixel centres the triangle covers on that
   row. Each edge function is monotonic along a row, so where it changes sign is estimated and
   then settled exactly by evaluating it at the two candidate pixel centres around the estimate.
3. *Pixels* (per covered triangle-pixel pair): the depth, packed with the triangle index into an
   int64 key, and ``scatter_reduce(amax)`` into a z-buffer holding every image of the batch
   (on the CPU a large batch is cut into passes of about half a million pixels).
4. *Fragments* (per visible pixel): triangle index, barycentric coordinates and depth.

Coverage is watertight: an edge shared by two triangles is evaluated bit-for-bit identically by
both (from its lower-numbered vertex, the opposite sign for one of them) and a pixel centre lying
exactly on an edge goes to one side by a fixed "top-left" rule, so no pixel is dropped or drawn
twice between neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

_INT64_MIN = -(2**63)
# Rows and columns are enumerated from a bounding box grown by this many pixels, so that a pixel
# centre which rounding puts inside a triangle just past a vertex is still considered.
_BOX_MARGIN = 1.0 / 64.0
# Most pixels (batch x height x width) rasterised in one pass; see _chunks.
_CHUNK_PIXELS_CPU = 1 << 19
_CHUNK_PIXELS_OTHER = 1 << 25

# Rows of the per-triangle table gathered for every (triangle, row): 3 per edge, then scalars.
_UCOL, _UROW, _DXE, _DYE, _JBASE, _INV, _DIR, _BASE, _SLOPE = (slice(3 * k, 3 * k + 3) for k in range(9))
_COL_LO, _COL_HI, _Z0, _ZCOL, _ZROW, _ZMIN, _ZMAX = range(27, 34)


@dataclass
class _Covered:
    """The visible pixels of a batch, compactly: what :class:`Fragments` holds at its covered pixels."""

    pixels: torch.Tensor  # (P,) flat index into B*H*W, increasing
    tri: torch.Tensor  # (P,) index of the visible triangle
    bary: torch.Tensor  # (3,P) barycentric coordinates
    depth: torch.Tensor  # (P,)


@dataclass
class Fragments:
    """What is visible at each pixel of a batch of renders."""

    face_index: torch.Tensor  # (B,H,W) int64, index of the visible triangle, -1 on background
    bary: torch.Tensor  # (B,H,W,3) float32 barycentric coordinates of the pixel centre (0 on background)
    depth: torch.Tensor  # (B,H,W) float32 z of the visible surface (-inf on background)
    # The same at the covered pixels only, which interpolation reads instead of searching the images.
    _covered: _Covered | None = field(default=None, repr=False, compare=False)

    @property
    def mask(self) -> torch.Tensor:
        """(B,H,W) bool, True where a triangle is visible."""
        return self.face_index >= 0

    def _compact(self) -> _Covered:
        if self._covered is None:
            pixels = torch.nonzero(self.face_index.reshape(-1) >= 0).squeeze(1)
            self._covered = _Covered(pixels, self.face_index.reshape(-1)[pixels],
                                     self.bary.reshape(-1, 3)[pixels].t(), self.depth.reshape(-1)[pixels])
        return self._covered


def _batched(vertices: torch.Tensor) -> torch.Tensor:
    if vertices.dim() == 2:
        vertices = vertices.unsqueeze(0)
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (B,V,3) or (V,3), got {tuple(vertices.shape)}")
    return vertices


def _as_faces(faces: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    faces = torch.as_tensor(faces, device=device).long()
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F,3), got {tuple(faces.shape)}")
    return faces


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> Fragments:
    """Rasterise triangle meshes into (B,H,W) fragments.

    ``vertices`` (B,V,3) or (V,3) in normalised image coordinates; ``faces`` (F,3) vertex indices
    shared by the batch. Orthographic; the larger ``z`` wins; no back-face culling, so either
    winding works; triangles partly or wholly outside the image are clipped and degenerate ones
    ignored. The fragments are not differentiable with respect to the vertices.
    """
    verts = _batched(vertices).detach().to(torch.float32)
    faces = _as_faces(faces, verts.device)
    B, H, W = verts.shape[0], int(height), int(width)
    n = B * H * W
    face_index = torch.full((n,), -1, dtype=torch.int64, device=verts.device)
    bary = torch.zeros((n, 3), dtype=torch.float32, device=verts.device)
    depth = torch.full((n,), float("-inf"), device=verts.device)
    parts = []
    with torch.no_grad():
        for start, stop in _chunks(B, H, W, verts.device):
            cov, _ = _rasterize(verts[start:stop], faces, H, W)
            offset = start * H * W
            face_index[offset:stop * H * W].index_copy_(0, cov.pixels, cov.tri)
            bary[offset:stop * H * W].index_copy_(0, cov.pixels, cov.bary.t())
            depth[offset:stop * H * W].index_copy_(0, cov.pixels, cov.depth)
            cov.pixels += offset
            parts.append(cov)
    covered = _Covered(*(torch.cat([getattr(c, name) for c in parts], -1)
                         for name in ("pixels", "tri", "bary", "depth")))
    return Fragments(face_index.view(B, H, W), bary.view(B, H, W, 3), depth.view(B, H, W), covered)


def _chunks(B: int, H: int, W: int, device: torch.device) -> list[tuple[int, int]]:
    """Batch slices rendered in one pass each.

    On the CPU a pass's temporaries are kept to a few MiB: larger ones cost more in fresh memory
    (page faults) and cache misses than the extra passes cost in overhead.
    """
    budget = _CHUNK_PIXELS_CPU if device.type == "cpu" else _CHUNK_PIXELS_OTHER
    step = max(1, budget // max(1, H * W))
    return [(start, min(B, start + step)) for start in range(0, B, step)] or [(0, 0)]


def _triangle_setup(verts: torch.Tensor, faces: torch.Tensor, H: int,
                    W: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (batch, triangle): the row-stage table (34, B*F), the barycentric table (12, B*F), the
    first row to visit and the number of rows (B*F,), zero for degenerate or non-finite triangles.

    Works in pixel-index space, where the centre of pixel (row i, column j) is exactly ``(j, i)``.
    """
    col = verts[..., 0] * (0.5 * H) + (0.5 * W - 0.5)
    row = verts[..., 1] * (-0.5 * H) + (0.5 * H - 0.5)
    cc, rr, zz = col[:, faces], row[:, faces], verts[..., 2][:, faces]  # (B,F,3) corners
    e1c, e1r = cc[..., 1] - cc[..., 0], rr[..., 1] - rr[..., 0]
    e2c, e2r = cc[..., 2] - cc[..., 0], rr[..., 2] - rr[..., 0]
    area2 = e1c * e2r - e2c * e1r
    valid = (area2 != 0) & torch.isfinite(area2) & torch.isfinite(zz).all(-1)

    # Edge k is opposite corner k and runs from corner k+1 to corner k+2. It is evaluated from its
    # lower-numbered vertex u to the other one w, so an edge shared by two triangles gets exactly
    # the same numbers in both; the sign that makes the inside positive (the winding, and whether
    # u->w runs with the triangle) is folded into (dx, dy), and a negation is exact.
    a_idx, b_idx = [1, 2, 0], [2, 0, 1]
    forward = faces[:, a_idx] < faces[:, b_idx]  # (F,3)
    ucol = torch.where(forward, cc[..., a_idx], cc[..., b_idx])
    urow = torch.where(forward, rr[..., a_idx], rr[..., b_idx])
    sign = torch.where(forward, 1.0, -1.0) * torch.sign(area2).unsqueeze(-1)
    dx = (torch.where(forward, cc[..., b_idx], cc[..., a_idx]) - ucol) * sign
    dy = (torch.where(forward, rr[..., b_idx], rr[..., a_idx]) - urow) * sign
    # Inside edge k: f = dx (row - urow) - dy (col - ucol) > 0. A pixel centre exactly on an edge
    # (f == 0) goes to the triangle whose inward normal (-dy, dx) points to +col, or to +row for
    # a horizontal edge ("top-left" rule); the neighbour across the edge has the opposite normal.
    # For those edges the test becomes !(-f > 0), so (dxe, dye) = -(dx, dy) there.
    top_left = (dy < 0) | ((dy == 0) & (dx > 0))
    flip = torch.where(top_left, -1.0, 1.0)
    dxe, dye = dx * flip, dy * flip

    # Along a row f is monotonic in col, rounding included: increasing when dy < 0 (the edge
    # bounds the span from the left, direction +1), decreasing when dy > 0 (from the right, -1).
    # A horizontal edge is a constant along the row: it empties the row or does nothing.
    horizontal = dy == 0
    direction = torch.where(dy > 0, -1.0, 1.0)
    inv = torch.where(horizontal, 0.0, 1.0 / torch.where(horizontal, 1.0, dye)).clamp_(-1e30, 1e30)
    jbase = torch.where(horizontal, -1e4, ucol)
    # The span bound is c1 + base + slope * (number of the two candidate columns where the test
    # on -f or f is positive); see _draw. For top-left edges that counts the failures.
    reach = torch.where(horizontal, float(W + 8), 1.0) * direction
    tl = top_left.float()
    base = 2.0 * reach * (1.0 - tl)
    slope = reach * (2.0 * tl - 1.0)

    # Depth plane in pixel-index space: z = z0 + zcol * col + zrow * row.
    inv_area2 = 1.0 / torch.where(valid, area2, 1.0)
    e1z, e2z = zz[..., 1] - zz[..., 0], zz[..., 2] - zz[..., 0]
    zcol = (e1z * e2r - e2z * e1r) * inv_area2
    zrow = (e2z * e1c - e1z * e2c) * inv_area2
    z0 = zz[..., 0] - zcol * cc[..., 0] - zrow * rr[..., 0]

    col_lo = torch.ceil(cc.amin(-1) - _BOX_MARGIN).clamp_(0, W)
    col_hi = torch.floor(cc.amax(-1) + _BOX_MARGIN).clamp_(-1, W - 1)
    row_lo = torch.ceil(rr.amin(-1) - _BOX_MARGIN).clamp_(0, H)
    row_hi = torch.floor(rr.amax(-1) + _BOX_MARGIN).clamp_(-1, H - 1)
    n_rows = torch.where(valid & (col_hi >= col_lo), row_hi - row_lo + 1, 0.0).clamp_(min=0)

    def rows(*tensors: torch.Tensor) -> torch.Tensor:  # (B,F,k) pieces -> (K, B*F)
        return torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors], 1).t().contiguous()

    row_table = rows(ucol, urow, dxe, dye, jbase, inv, direction.expand_as(ucol), base, slope,
                     torch.stack((col_lo, col_hi, torch.where(valid, z0, 0.0), torch.where(valid, zcol, 0.0),
                                  torch.where(valid, zrow, 0.0), zz.amin(-1), zz.amax(-1)), -1))
    bary_table = rows(ucol, urow, dx, dy)
    return row_table, bary_table, row_lo.reshape(-1), n_rows.reshape(-1).long()


def _rasterize(verts: torch.Tensor, faces: torch.Tensor, H: int, W: int) -> tuple[_Covered, torch.Tensor]:
    """Covered pixels of ``verts`` (B,V,3) float32, and the (B*H*W,) coverage mask."""
    device = verts.device
    B, F = verts.shape[0], faces.shape[0]
    key_buf = torch.full((B * H * W,), _INT64_MIN, dtype=torch.int64, device=device)
    bary_table = None
    if F > 0 and B * H * W > 0:
        row_table, bary_table, row_lo, n_rows = _triangle_setup(verts, faces, H, W)
        n_rows_total = int(n_rows.sum())
        if n_rows_total > 0:
            _draw(key_buf, row_table, row_lo, n_rows, n_rows_total, F, H, W)

    mask = key_buf != _INT64_MIN
    pixels = torch.nonzero(mask).squeeze(1)
    keys = key_buf.index_select(0, pixels)
    tri = keys & 0xFFFFFFFF
    # The upper half of a key holds the depth's float bits, made monotonic (see _draw).
    zbits = (keys >> 32).to(torch.int32)
    depth = (zbits ^ ((zbits >> 31) & 0x7FFFFFFF)).view(torch.float32)
    if bary_table is None or pixels.numel() == 0:
        bary = torch.zeros((3, pixels.numel()), dtype=torch.float32, device=device)
    else:
        # Barycentrics of the pixel centre: the winner's three edge functions, normalised by their
        # sum (twice its area).
        batch = torch.div(pixels, H * W, rounding_mode="floor")
        in_image = pixels - batch * (H * W)
        prow = torch.div(in_image, W, rounding_mode="floor")
        pcol = (in_image - prow * W).float()
        t = bary_table.index_select(1, batch * F + tri)
        f = t[6:9] * (prow.float() - t[3:6]) - t[9:12] * (pcol - t[0:3])
        f.clamp_(min=0.0)
        total = f[0] + f[1] + f[2]
        bary = f / total.clamp_(min=torch.finfo(torch.float32).tiny)
    return _Covered(pixels, tri, bary, depth), mask


def _draw(key_buf: torch.Tensor, row_table: torch.Tensor, row_lo: torch.Tensor, n_rows: torch.Tensor,
          n_rows_total: int, F: int, H: int, W: int) -> None:
    """Scatter the depth key of every covered (triangle, pixel) into ``key_buf`` with amax."""
    device = key_buf.device
    # --- one entry per (triangle, row) -----------------------------------------------------------
    tri_of_row = torch.repeat_interleave(n_rows, output_size=n_rows_total)  # into B*F
    first_row = torch.cumsum(n_rows, 0) - n_rows
    g = row_table.index_select(1, tri_of_row)  # (34, R)
    row = torch.arange(n_rows_total, device=device) + (row_lo.long() - first_row).index_select(0, tri_of_row)
    rowf = row.float()
    ucol, dye, direction = g[_UCOL], g[_DYE], g[_DIR]
    p = g[_DXE] * (rowf - g[_UROW])
    # Column where the edge crosses the row, to well within a pixel; the span's exact end is then
    # settled by testing the two candidate pixel centres around it with the very expression the
    # neighbouring triangle uses, which is what makes shared edges watertight.
    j = torch.addcmul(g[_JBASE], p, g[_INV]).clamp_(-2.0, W + 1.0)
    c1 = direction * (torch.ceil(direction * j) - 1.0)  # ceil(j) - 1 for a left bound, floor(j) + 1 for a right one
    positive = (p - dye * (c1 - ucol) > 0).float()
    positive += p - dye * (c1 + direction - ucol) > 0
    bound = c1 + g[_BASE] + g[_SLOPE] * positive
    big = float(2 * W + 32)
    left = direction > 0
    col_lo = torch.maximum(torch.where(left, bound, -big).amax(0), g[_COL_LO])
    col_hi = torch.minimum(torch.where(left, big, bound).amin(0), g[_COL_HI])
    n_cols = (col_hi - col_lo + 1.0).clamp_(min=0.0)
    # Depth at the span's ends, kept within the triangle's depth range so that the plane of a
    # sliver, extrapolated by rounding, cannot jump in front of its neighbours.
    z_row = g[_Z0] + g[_ZROW] * rowf
    zmin, zmax = g[_ZMIN], g[_ZMAX]
    z_first = torch.minimum(torch.maximum(z_row + g[_ZCOL] * col_lo, zmin), zmax)
    z_last = torch.minimum(torch.maximum(z_row + g[_ZCOL] * col_hi, zmin), zmax)
    z_step = (z_last - z_first) / (n_cols - 1.0).clamp_(min=1.0)

    n_cols = n_cols.long()
    n_pairs = int(n_cols.sum())
    if n_pairs == 0:
        return
    batch = torch.div(tri_of_row, F, rounding_mode="floor")
    span_start = (batch * H + row) * W + col_lo.long()  # flat index of the span's first pixel
    first_pair = torch.cumsum(n_cols, 0) - n_cols  # its first entry in the pixel stage
    tri_id = tri_of_row - batch * F

    # --- one entry per covered (triangle, pixel) -------------------------------------------------
    row_of_pair = torch.repeat_interleave(n_cols, output_size=n_pairs)
    k = torch.arange(n_pairs, device=device) - first_pair.index_select(0, row_of_pair)
    z = torch.addcmul(*torch.stack((z_first, z_step)).index_select(1, row_of_pair), k.float())
    # Key: a monotonic int32 image of the float depth (negative floats get their magnitude bits
    # flipped) above the triangle index. amax keeps the closest surface, ties going to the
    # higher triangle index, for all the images of the pass at once.
    zi = z.view(torch.int32)
    zi = zi ^ ((zi >> 31) & 0x7FFFFFFF)
    key = (zi.long() << 32) | tri_id.index_select(0, row_of_pair)
    key_buf.scatter_reduce_(0, span_start.index_select(0, row_of_pair) + k, key, reduce="amax", include_self=True)


def interpolate(attributes: torch.Tensor, faces: torch.Tensor, fragments: Fragments) -> torch.Tensor:
    """Barycentric interpolation of per-vertex ``attributes`` at every pixel: (B,H,W,C).

    ``attributes`` (B,V,C), or (V,C) shared by the batch. Zeros on background. Differentiable
    with respect to ``attributes``.
    """
    B, H, W = fragments.face_index.shape
    cov = fragments._compact()
    values = _interpolate_covered(attributes, _as_faces(faces, cov.pixels.device), cov, B, H * W)
    out = values.new_zeros((B * H * W, values.shape[-1])).index_put((cov.pixels,), values)
    return out.view(B, H, W, -1)


def _interpolate_covered(attributes: torch.Tensor, faces: torch.Tensor, cov: _Covered, B: int,
                         image_size: int) -> torch.Tensor:
    """(P,C) interpolated ``attributes`` at the covered pixels."""
    if attributes.dim() == 3:
        if attributes.shape[0] not in (1, B):
            raise ValueError(f"attributes have batch {attributes.shape[0]}, the fragments {B}")
        offset = None
        if attributes.shape[0] > 1:
            offset = torch.div(cov.pixels, image_size, rounding_mode="floor") * attributes.shape[1]
        attributes = attributes.reshape(-1, attributes.shape[-1])
    elif attributes.dim() == 2:
        offset = None
    else:
        raise ValueError(f"attributes must be (B,V,C) or (V,C), got {tuple(attributes.shape)}")
    corners = faces.index_select(0, cov.tri)  # (P,3)
    bary = cov.bary.to(attributes.dtype)
    out = None
    for k in range(3):
        vid = corners[:, k] if offset is None else corners[:, k] + offset
        term = attributes.index_select(0, vid) * bary[k].unsqueeze(1)
        out = term if out is None else out + term
    return out


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit area-weighted vertex normals, (B,V,3), or (V,3) for unbatched ``vertices``.

    Oriented by the winding of ``faces``: counter-clockwise seen from where the normal points.
    """
    verts = _batched(vertices)
    faces = _as_faces(faces, verts.device)
    corners = verts[:, faces]  # (B,F,3,3)
    # The cross product's length is twice the triangle's area, so summing it weights by area.
    face_n = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
    normals = torch.zeros_like(verts).index_add_(1, faces.t().reshape(-1), face_n.repeat(1, 3, 1))
    normals = normals / torch.linalg.vector_norm(normals, dim=-1, keepdim=True).clamp(min=1e-12)
    return normals if vertices.dim() == 3 else normals[0]


def render_grey(vertices: torch.Tensor, faces: torch.Tensor, height: int, width: int,
                light_dir: tuple[float, float, float] = (0.3, 0.3, 1.0),
                ambient: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """I_R: the mesh as a Lambert-shaded grey surface on black.

    ``vertices`` (B,V,3) or (V,3) in normalised image coordinates, ``faces`` (F,3). Normals are
    interpolated per pixel from area-weighted vertex normals and flipped toward the camera where
    they point away (the face mesh is an open surface whose winding the caller need not know).
    Grey level: ``ambient + (1 - ambient) * max(0, n . light_dir)``.
    Returns the image (B,H,W,3) float32 in [0, 1], 0 on background, and the mask (B,H,W) bool.
    """
    verts = _batched(vertices).detach().to(torch.float32)
    faces = _as_faces(faces, verts.device)
    B, H, W = verts.shape[0], int(height), int(width)
    image = torch.empty((B, H, W, 3), dtype=torch.float32, device=verts.device)
    mask = torch.empty((B, H, W), dtype=torch.bool, device=verts.device)
    light = torch.tensor(light_dir, dtype=torch.float64)
    light = (light / light.norm()).tolist()
    with torch.no_grad():
        normals = vertex_normals(verts, faces)
        for start, stop in _chunks(B, H, W, verts.device):
            cov, chunk_mask = _rasterize(verts[start:stop], faces, H, W)
            grey = torch.zeros((stop - start) * H * W, dtype=torch.float32, device=verts.device)
            if cov.pixels.numel() > 0:
                grey.index_copy_(0, cov.pixels, _shade(normals[start:stop], faces, cov, H * W, light, ambient))
            image[start:stop] = grey.view(-1, H, W, 1)
            mask[start:stop] = chunk_mask.view(-1, H, W)
    return image, mask


def _shade(normals: torch.Tensor, faces: torch.Tensor, cov: _Covered, image_size: int, light: list[float],
           ambient: float) -> torch.Tensor:
    """(P,) Lambert grey levels at the covered pixels, from (B,V,3) vertex normals."""
    B, F = normals.shape[0], faces.shape[0]
    # Corner normals of every triangle laid out (component, corner) x (B*F), for one gather.
    table = normals[:, faces].permute(3, 2, 0, 1).reshape(9, B * F)
    batch = torch.div(cov.pixels, image_size, rounding_mode="floor")
    t = table.index_select(1, batch * F + cov.tri).view(3, 3, -1)
    b = cov.bary
    n = t[:, 0] * b[0] + t[:, 1] * b[1] + t[:, 2] * b[2]  # (3,P)
    # Turned toward the camera where it points away. Deciding per pixel rather than by the visible
    # triangle's winding keeps the shading smooth where a fold shows a triangle's back.
    n *= torch.where(n[2] < 0, -1.0, 1.0)
    dot = n[0] * light[0] + n[1] * light[1] + n[2] * light[2]
    norm2 = n[0] * n[0] + n[1] * n[1] + n[2] * n[2]
    lambert = (dot * torch.rsqrt(norm2.clamp_(min=1e-24))).clamp_(min=0.0)
    return (ambient + (1.0 - ambient) * lambert).clamp_(0.0, 1.0)


def overlay(image: np.ndarray, render: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend ``render`` over the photo ``image`` where ``mask`` is set; elsewhere the photo is unchanged.

    ``image`` uint8 (H,W,3); ``render`` (H,W,3) or (H,W), float in [0, 1] or uint8; ``mask`` (H,W)
    bool. Returns a new uint8 (H,W,3) image.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H,W,3), got {image.dtype} {image.shape}")
    render = np.asarray(render)
    top = render.astype(np.float32) if render.dtype == np.uint8 else np.clip(render.astype(np.float32), 0, 1) * 255
    if top.ndim == 2:
        top = top[..., None]
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2] or top.shape[:2] != image.shape[:2]:
        raise ValueError(f"image {image.shape}, render {render.shape} and mask {mask.shape} sizes differ")
    out = image.copy()
    blended = (1.0 - alpha) * image[mask].astype(np.float32) + alpha * np.broadcast_to(top, image.shape)[mask]
    out[mask] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
