"""Renders frames of one synthetic person: one rasteriser call per batch, then shading per material.

Per batch of frames: the scene mesh (:class:`~.geometry.HeadGeometry`) is posed, rasterised once
(the z-buffer settles face, hair, eyeballs, mouth, neck and clothes against each other), and each
visible pixel is coloured by its triangle's material:

* textured (skin, hair, neck, clothes): the identity's atlas (:mod:`.appearance`), darkened by the
  forehead-line and nasolabial-fold channels in proportion to the frame's brow-raise and smile
  coefficients, and Lambert-lit with per-pixel normals (the identity's light direction);
* eyeballs: white sclera, shadowed towards the lids; the iris and pupil are drawn where the face
  model puts the iris (landmarks 468-477): the iris disc's projected centre and axes give each
  pixel's position in iris coordinates, so the iris foreshortens as the head turns;
* teeth: ivory, with gaps between teeth and a shadow under the lips, darker towards the corners;
* mouth interior: dark red, darker with depth, with a tongue in the lower half.

Pixels not covered show the identity's background. Images are rendered at ``supersample`` times
the size and averaged down, which smooths edges.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mimaface.face3d.model import FaceModel
from mimaface.face3d.render import rasterize, vertex_normals
from mimaface.synthtalk.appearance import (
    CH_FOLD,
    CH_FOREHEAD,
    Identity,
    background_image,
    bake_atlas,
    head_style,
)
from mimaface.synthtalk.geometry import (
    MAT_EYE_LEFT,
    MAT_EYE_RIGHT,
    MAT_MOUTH,
    MAT_TEETH,
    MAT_TEXTURED,
    HeadGeometry,
)

# Boundaries between teeth, across the mouth (-1..1 corner to corner): wider incisors in front.
_TOOTH_EDGES = np.array([0.0, 0.19, 0.36, 0.5, 0.62, 0.73, 0.83])
_TOOTH_EDGES = np.concatenate([-_TOOTH_EDGES[:0:-1], _TOOTH_EDGES])
IRIS_LEFT, IRIS_RIGHT = 473, 468  # centre landmark of the subject's left and right iris


def texture_size(size: int) -> int:
    """Atlas tile resolution for frames of ``size`` pixels: about the face's size on screen."""
    return int(min(256, max(64, size)))


def default_supersample(size: int) -> int:
    """2x supersampling below 256 pixels (where jagged edges show most), none above."""
    return 2 if size < 256 else 1


class SceneRenderer:
    """Renders frames of one identity at one size."""

    def __init__(self, identity: Identity, size: int, model: FaceModel | None = None, *,
                 supersample: int | None = None):
        self.model = model = model or FaceModel.load()
        self.identity = identity
        self.size = int(size)
        self.supersample = default_supersample(size) if supersample is None else int(supersample)
        self.render_size = self.size * self.supersample
        self.geometry = geo = HeadGeometry(model, identity.shape, head_style(identity, model))
        self.faces = torch.as_tensor(geo.faces)
        self.material = torch.as_tensor(geo.material)
        self.attributes = torch.as_tensor(geo.attributes)
        self.shaded_faces = torch.as_tensor(geo.shaded_faces)
        self.weld = torch.as_tensor(geo.weld)
        self.atlas = bake_atlas(identity, model, texture_size(size))
        self.background = torch.from_numpy(background_image(identity, self.render_size))
        self.light = torch.as_tensor(identity.light_dir / np.linalg.norm(identity.light_dir), dtype=torch.float32)
        self.tint = torch.as_tensor(identity.light_tint, dtype=torch.float32)
        names = model.expression_names
        # Expression columns driving the wrinkle channels, in atlas channel order.
        self._wrinkle_columns = [names.index(n) for n in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight",
                                                           "mouthSmileLeft", "mouthSmileRight")]

    # ---------------------------------------------------------------------------------------------
    def render(self, pose: np.ndarray, expression: np.ndarray, gaze: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
        """Frames (T,S,S,3) uint8 for per-frame ``pose`` (T,6), ``expression`` (T,K), ``gaze`` (T,4)."""
        pose, expression, gaze = (np.atleast_2d(np.asarray(a, np.float64)) for a in (pose, expression, gaze))
        out = np.empty((len(pose), self.size, self.size, 3), np.uint8)
        for start in range(0, len(pose), batch_size):
            window = slice(start, start + batch_size)
            out[window] = self._render_batch(pose[window], expression[window], gaze[window])
        return out

    def _render_batch(self, pose: np.ndarray, expression: np.ndarray, gaze: np.ndarray) -> np.ndarray:
        B, S = len(pose), self.render_size
        model, ident = self.model, self.identity
        face = model.vertices(ident.shape, expression)
        verts = torch.as_tensor(self.geometry.vertices(face, pose), dtype=torch.float32)
        iris = model.landmarks(pose, ident.shape, expression, gaze)[:, 468:]  # posed, normalised
        normals = vertex_normals(verts, self.shaded_faces)[:, self.weld]
        frags = rasterize(verts, self.faces, S, S)

        flat = frags.face_index.reshape(-1)
        pixels = torch.nonzero(flat >= 0).squeeze(1)
        tri = flat.index_select(0, pixels)
        bary = frags.bary.reshape(-1, 3).index_select(0, pixels)
        batch = torch.div(pixels, S * S, rounding_mode="floor")
        material = self.material.index_select(0, tri)
        corners = self.faces.index_select(0, tri)  # (P,3)
        attrs = _interpolate(self.attributes, corners, bary)
        colour = torch.empty((len(pixels), 3), dtype=torch.float32)

        textured = torch.nonzero(material == MAT_TEXTURED).squeeze(1)
        if len(textured):
            offset = (batch.index_select(0, textured) * verts.shape[1])[:, None]
            n = _interpolate(normals.reshape(-1, 3), corners.index_select(0, textured) + offset, bary.index_select(0, textured))
            coeffs = torch.as_tensor(expression[:, self._wrinkle_columns], dtype=torch.float32)
            colour[textured] = self._shade_textured(attrs.index_select(0, textured), n,
                                                    coeffs.index_select(0, batch.index_select(0, textured)))
        row = torch.div(pixels - batch * S * S, S, rounding_mode="floor")
        col = pixels - batch * S * S - row * S
        px = (2.0 * col.float() + 1.0) / S - 1.0
        py = 1.0 - (2.0 * row.float() + 1.0) / S
        for mat, centre in ((MAT_EYE_LEFT, IRIS_LEFT), (MAT_EYE_RIGHT, IRIS_RIGHT)):
            sel = torch.nonzero(material == mat).squeeze(1)
            if len(sel):
                colour[sel] = self._shade_eye(iris, centre - 468, batch.index_select(0, sel), px.index_select(0, sel),
                                              py.index_select(0, sel), attrs.index_select(0, sel))
        sel = torch.nonzero(material == MAT_TEETH).squeeze(1)
        if len(sel):
            colour[sel] = self._shade_teeth(attrs.index_select(0, sel))
        sel = torch.nonzero(material == MAT_MOUTH).squeeze(1)
        if len(sel):
            colour[sel] = self._shade_mouth(attrs.index_select(0, sel))

        image = self.background.reshape(1, S * S, 3).repeat(B, 1, 1).reshape(-1, 3)
        image.index_copy_(0, pixels, colour)
        image = image.reshape(B, S, S, 3)
        if self.supersample > 1:
            image = F.avg_pool2d(image.permute(0, 3, 1, 2), self.supersample).permute(0, 2, 3, 1)
        return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()

    # ---------------------------------------------------------------------------------------------
    def _lambert(self, normals: torch.Tensor) -> torch.Tensor:
        """(P,3) light factor for (P,3) unnormalised normals, turned towards the camera."""
        n = normals * torch.where(normals[:, 2:3] < 0, -1.0, 1.0)
        n = n * torch.rsqrt((n * n).sum(1, keepdim=True).clamp(min=1e-24))
        lambert = (n @ self.light).clamp(min=0.0)
        ambient = self.identity.ambient
        return (ambient + (1.0 - ambient) * lambert)[:, None] * self.tint

    def _shade_textured(self, attrs: torch.Tensor, normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        grid = attrs[:, :2].reshape(1, 1, -1, 2)
        tex = F.grid_sample(self.atlas, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].t()
        wrinkles = (tex[:, CH_FOREHEAD:CH_FOLD + 2] * coeffs).sum(1, keepdim=True)
        albedo = tex[:, :3] * (1.0 - wrinkles).clamp(0.0, 1.3)
        return albedo * self._lambert(normals)

    def _shade_eye(self, iris: np.ndarray, centre: int, batch: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                   attrs: torch.Tensor) -> torch.Tensor:
        # The iris disc's projection: centre c and the images a, b of its two radii (ring points).
        c = iris[:, centre, :2]
        a = iris[:, centre + 1, :2] - c
        b = iris[:, centre + 2, :2] - c
        det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
        det = np.where(np.abs(det) < 1e-12, 1e-12, det)
        inverse = np.stack([b[:, 1], -b[:, 0], -a[:, 1], a[:, 0]], -1) / det[:, None]  # rows of [a b]^-1
        table = torch.as_tensor(np.concatenate([c, inverse], 1), dtype=torch.float32).index_select(0, batch)
        dx, dy = px - table[:, 0], py - table[:, 1]
        s = table[:, 2] * dx + table[:, 3] * dy
        t = table[:, 4] * dx + table[:, 5] * dy
        r = torch.sqrt(s * s + t * t)
        radius_px = torch.as_tensor(np.linalg.norm(a, axis=1) * self.render_size / 2.0, dtype=torch.float32).index_select(0, batch)
        soft = 1.0 / radius_px.clamp(min=1.0)  # one pixel, in iris radii
        ident = self.identity
        edge = attrs[:, 2]  # 1 at the lids, 0 deep inside
        sclera = torch.tensor([0.93, 0.9, 0.87]) * (1.0 - 0.5 * edge**2)[:, None]
        angle = torch.atan2(t, s)
        streaks = 1.0 + 0.18 * torch.sin(angle * 23.0 + 3.0 * r) * torch.sin(angle * 7.0 + 1.0)
        iris_rgb = torch.as_tensor(ident.iris, dtype=torch.float32)
        outer = torch.as_tensor(ident.iris_outer, dtype=torch.float32)
        ring = ((r - 0.55) / 0.45).clamp(0.0, 1.0)[:, None]
        iris_col = (iris_rgb + (outer - iris_rgb) * ring**2) * streaks[:, None] * (1.0 - 0.45 * edge**2)[:, None]
        pupil = torch.tensor([0.02, 0.02, 0.025])
        iris_col = iris_col + (pupil - iris_col) * ((0.42 - r) / soft + 0.5).clamp(0.0, 1.0)[:, None]
        col = sclera + (iris_col - sclera) * ((1.0 - r) / soft + 0.5).clamp(0.0, 1.0)[:, None]
        # A catch-light on the cornea towards the light.
        light = self.light
        glint_r = torch.sqrt((s - 0.35 * light[0]) ** 2 + (t - 0.35 * light[1] - 0.15) ** 2)
        col = col + (0.95 - col) * ((0.14 - glint_r) / soft + 0.5).clamp(0.0, 1.0)[:, None] * (1.0 - edge)[:, None]
        brightness = ident.ambient + (1.0 - ident.ambient) * float(max(0.0, self.light[2]))
        return col * brightness * self.tint

    def _shade_teeth(self, attrs: torch.Tensor) -> torch.Tensor:
        across, down = attrs[:, 0], attrs[:, 1]
        edges = torch.as_tensor(_TOOTH_EDGES, dtype=torch.float32)
        gap = torch.exp(-0.5 * ((across[:, None] - edges) / 0.018) ** 2).sum(1).clamp(max=1.0)
        shade = (1.0 - 0.55 * across**2) * (0.55 + 0.45 * (down / 0.35).clamp(0.0, 1.0)) * (1.0 - 0.45 * gap)
        ivory = torch.tensor([0.93, 0.9, 0.8])
        ambient = self.identity.ambient
        return ivory * shade[:, None] * (ambient + (1.0 - ambient) * 0.8) * self.tint

    def _shade_mouth(self, attrs: torch.Tensor) -> torch.Tensor:
        depth, lower = attrs[:, 1], attrs[:, 2]
        throat = torch.tensor([0.32, 0.09, 0.09])
        tongue = torch.tensor([0.62, 0.26, 0.27])
        tongue_w = ((lower - 0.55) / 0.2).clamp(0.0, 1.0) * (1.0 - depth).clamp(0.0, 1.0)
        col = throat + (tongue - throat) * tongue_w[:, None]
        return col * (1.0 - 0.8 * depth.clamp(0.0, 1.0))[:, None] * self.identity.ambient * 1.4


def _interpolate(table: torch.Tensor, corners: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """(P,C) barycentric blend of rows of ``table`` (N,C) at triangle ``corners`` (P,3)."""
    out = table.index_select(0, corners[:, 0]) * bary[:, 0:1]
    out += table.index_select(0, corners[:, 1]) * bary[:, 1:2]
    out += table.index_select(0, corners[:, 2]) * bary[:, 2:3]
    return out
