"""The face model: mean shape + identity basis + expression blendshapes on the MediaPipe mesh, and eyes.

A face's 468 mesh vertices in model space are ``mean + identity @ B_id + expression @ B_exp``;
posed by a similarity transform (:mod:`mimaface.face3d.pose`) they land in normalised image
coordinates (:mod:`mimaface.face3d.camera`). The model also places the 10 iris landmarks
(MediaPipe indices 468-477) from a 4-number gaze, so the model produces the same 478 points the
detector does. Gaze is ``[leftX, leftY, rightX, rightY]``: each iris centre's offset from the
midpoint of its eye's corners along the eye's horizontal axis (towards ``+x``, the subject's
left) and vertical axis (up), divided by the eye's width (corner to corner).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import json
from dataclasses import dataclass, field

import numpy as np

from mimaface.face3d.blendshapes import (
    Anatomy,
    build_expression_basis,
    build_identity_basis,
)
from mimaface.face3d.pose import apply_pose

NUM_VERTICES = 468
NUM_LANDMARKS = 478
GAZE_NAMES = ("gazeLeftX", "gazeLeftY", "gazeRightX", "gazeRightY")
# (corner on the -x side, corner on the +x side, iris centre, first iris ring index) per eye, left eye first.
_EYES = ((362, 263, 473, 474), (33, 133, 468, 469))
IRIS_RADIUS = 0.19  # iris radius / eye width (about 5.9 mm / 31 mm)
IRIS_DEPTH = 0.12  # iris centre in front of the corners' midpoint, in eye widths


@dataclass
class FaceModel:
    """Linear face model; build it with :meth:`load`."""

    mean_shape: np.ndarray  # (468,3)
    triangles: np.ndarray  # (F,3) int64, facing the camera
    mirror: np.ndarray  # (468,)
    regions: dict[str, np.ndarray]
    expression_names: tuple[str, ...]
    expression_basis: np.ndarray  # (K,468,3)
    identity_names: tuple[str, ...]
    identity_basis: np.ndarray  # (M,468,3)
    metadata: dict = field(default_factory=dict)

    @classmethod
    @functools.cache
    def load(cls, path: str | None = None) -> FaceModel:
        """Load the model asset (default: the one bundled with the package) and build its bases."""
        source = path or importlib.resources.files("mimaface") / "assets" / "face_model.npz"
        with importlib.resources.as_file(source) if path is None else contextlib.nullcontext(path) as p:
            data = np.load(p)
            mean = data["mean_shape"].astype(np.float64)
            mirror = data["mirror"].astype(np.int64)
            regions = {k[len("region_"):]: data[k].astype(np.int64) for k in data.files if k.startswith("region_")}
            triangles = data["triangles"].astype(np.int64)
            metadata = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
        anatomy = Anatomy(mean, mirror, regions)
        exp_names, exp_basis = build_expression_basis(anatomy)
        id_names, id_basis = build_identity_basis(anatomy)
        return cls(mean, triangles, mirror, regions, tuple(exp_names), exp_basis, tuple(id_names), id_basis, metadata)

    @property
    def num_expressions(self) -> int:
        return len(self.expression_names)

    @property
    def num_identities(self) -> int:
        return len(self.identity_names)

    def vertices(self, identity: np.ndarray | None = None, expression: np.ndarray | None = None) -> np.ndarray:
        """Model-space vertices ``(..., 468, 3)`` for coefficients ``(..., M)`` and ``(..., K)``."""
        out = self.mean_shape
        if identity is not None:
            out = out + np.einsum("...m,mvd->...vd", np.asarray(identity, np.float64), self.identity_basis)
        if expression is not None:
            out = out + np.einsum("...k,kvd->...vd", np.asarray(expression, np.float64), self.expression_basis)
        return out

    def posed_vertices(self, pose: np.ndarray, identity: np.ndarray | None = None, expression: np.ndarray | None = None) -> np.ndarray:
        """Vertices in normalised image coordinates for poses ``(..., 6)``."""
        return apply_pose(self.vertices(identity, expression), pose)

    def landmarks(self, pose: np.ndarray, identity: np.ndarray | None = None, expression: np.ndarray | None = None,
                  gaze: np.ndarray | None = None) -> np.ndarray:
        """All 478 landmarks (mesh + irises) in normalised image coordinates."""
        verts = self.vertices(identity, expression)
        gaze = np.zeros(verts.shape[:-2] + (4,)) if gaze is None else np.asarray(gaze, np.float64)
        return apply_pose(np.concatenate([verts, self.iris_points(verts, gaze)], -2), pose)

    def iris_points(self, vertices: np.ndarray, gaze: np.ndarray) -> np.ndarray:
        """Model-space iris landmarks ``(..., 10, 3)`` in MediaPipe order (468-472 right, 473-477 left)."""
        gaze = np.broadcast_to(gaze, vertices.shape[:-2] + (4,))
        out = np.zeros(vertices.shape[:-2] + (10, 3))
        for eye, (corner_a, corner_b, centre_idx, ring_idx) in enumerate(_EYES):
            mid, ex, ey, ez, width = _eye_frame(vertices, corner_a, corner_b)
            g = gaze[..., 2 * eye: 2 * eye + 2]
            centre = mid + width[..., None] * (g[..., :1] * ex + g[..., 1:] * ey + IRIS_DEPTH * ez)
            radius = IRIS_RADIUS * width[..., None]
            ring = [centre + radius * d for d in (ex, ey, -ex, -ey)]
            base = centre_idx - NUM_VERTICES
            out[..., base, :] = centre
            for k, point in enumerate(ring):
                out[..., ring_idx - NUM_VERTICES + k, :] = point
        return out

    @staticmethod
    def gaze_from_landmarks(points: np.ndarray) -> np.ndarray:
        """Gaze ``(..., 4)`` from 478 landmarks ``(..., 478, 3)`` expressed in model space (pose undone)."""
        out = []
        for corner_a, corner_b, centre_idx, _ in _EYES:
            mid, ex, ey, _, width = _eye_frame(points, corner_a, corner_b)
            rel = points[..., centre_idx, :] - mid
            out += [(rel * ex).sum(-1) / width, (rel * ey).sum(-1) / width]
        return np.stack(out, -1)


def _eye_frame(points: np.ndarray, corner_a: int, corner_b: int):
    """Midpoint, unit axes (x from corner a to b, y up, z out) and width of an eye from its corners."""
    a, b = points[..., corner_a, :], points[..., corner_b, :]
    ex = b - a
    width = np.linalg.norm(ex, axis=-1)
    ex = ex / width[..., None]
    up = np.broadcast_to(np.array([0.0, 1.0, 0.0]), ex.shape)
    ey = up - ex * (ex * up).sum(-1, keepdims=True)
    ey = ey / np.linalg.norm(ey, axis=-1, keepdims=True)
    ez = np.cross(ex, ey)
    return 0.5 * (a + b), ex, ey, ez, width
