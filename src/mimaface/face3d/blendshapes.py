"""Semantic deformation bases of the face model, built from the mean shape.

Expression: blendshapes named after Apple ARKit's convention (``jawOpen``, ``mouthSmileLeft``,
``eyeBlinkRight`` ...), each a vertex displacement field at full activation (coefficient 1)
with a smooth falloff, so motion can be edited by name. All are one-sided: coefficients live
in ``[0, 1]``. ``Left``/``Right`` are the *subject's* sides (``+x`` in model space is the
subject's left, which appears on the image's right); every ``...Right`` shape is the exact
mirror image of its ``...Left`` shape.

``jawLeft``/``jawRight`` and ``mouthLeft``/``mouthRight`` are antagonists (opposite fields): a
face uses at most one of each pair, and a fit never activates both.

Identity: smooth, zero-mean-prior shape deformations (face width and length, jaw, chin, nose,
eye spacing and size, lips, cheeks) with a standard-normal prior on their coefficients; their
similarity-transform component (translation, rotation, uniform scale) is projected out so
that identity never competes with the pose.

Model units: the distance between the cheek vertices 234 and 454 is 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Anatomy:
    """Landmark positions and region weights shared by the basis definitions."""

    shape: np.ndarray  # (468,3) mean shape
    mirror: np.ndarray  # (468,) left/right counterpart of each vertex
    regions: dict[str, np.ndarray]

    def point(self, index: int) -> np.ndarray:
        return self.shape[index]

    def gaussian(self, centre: np.ndarray, radius: float | tuple[float, float, float]) -> np.ndarray:
        """Smooth falloff ``exp(-|(v - centre) / radius|^2 / 2)``, optionally anisotropic."""
        d = (self.shape - centre) / np.asarray(radius, dtype=np.float64)
        return np.exp(-0.5 * (d**2).sum(-1))

    def mirror_field(self, field: np.ndarray) -> np.ndarray:
        """The left/right mirror image of a displacement field."""
        return field[self.mirror] * np.array([-1.0, 1.0, 1.0])

    # -- mouth ---------------------------------------------------------------------------
    def contour_y(self, indices: np.ndarray, x: np.ndarray) -> np.ndarray:
        pts = self.shape[indices]
        order = np.argsort(pts[:, 0])
        return np.interp(x, pts[order, 0], pts[order, 1])

    def lower_face(self) -> np.ndarray:
        """Weight of moving with the lower jaw: 1 on the lower lip and chin, 0 on the upper lip."""
        x, y = self.shape[:, 0], self.shape[:, 1]
        upper = self.contour_y(self.regions["lips_inner_upper"], x)
        lower = self.contour_y(self.regions["lips_inner_lower"], x)
        mid = 0.5 * (upper + lower)
        corner_x = np.abs(self.shape[291, 0])
        # The band widens beyond the mouth corners so the cheeks stretch smoothly.
        band = 0.012 + 0.6 * np.clip(np.abs(x) - corner_x, 0.0, None)
        w = _smoothstep(mid + band, mid - band, y)
        w[self.regions["lips_inner_upper"]] = 0.0
        w[self.regions["lips_outer_upper"]] = 0.0
        inner_lower = self.regions["lips_inner_lower"]
        w[inner_lower] = np.maximum(w[inner_lower], _smoothstep(corner_x + 0.01, corner_x - 0.05, np.abs(x[inner_lower])))
        return w

    def lips(self) -> np.ndarray:
        """Weight of the lip region (both lips)."""
        centre = 0.5 * (self.point(13) + self.point(14))
        span = abs(self.point(291)[0] - self.point(61)[0]) / 2
        return self.gaussian(centre, (span * 0.9, 0.075, 0.2))

    # -- eyes ----------------------------------------------------------------------------
    def eye(self, side: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(upper-lid weight, lower-lid weight, lid opening) for the subject's ``side`` eye."""
        inner, outer, top, bottom = (362, 263, 386, 374) if side == "left" else (133, 33, 159, 145)
        centre = 0.5 * (self.point(inner) + self.point(outer))
        half_width = 0.5 * abs(self.point(outer)[0] - self.point(inner)[0])
        opening = float(self.point(top)[1] - self.point(bottom)[1])
        near = self.gaussian(centre, (half_width * 0.75, 0.06, 0.2))
        y = self.shape[:, 1] - centre[1]
        upper = near * _smoothstep(0.15 * opening, 0.45 * opening, y) * np.exp(-0.5 * (np.clip(y - 0.5 * opening, 0, None) / 0.025) ** 2)
        lower = near * _smoothstep(-0.15 * opening, -0.45 * opening, y) * np.exp(-0.5 * (np.clip(-y - 0.5 * opening, 0, None) / 0.02) ** 2)
        # Normalised so the middle of each lid moves by exactly the amplitude a shape asks for.
        return np.clip(upper / upper[top], 0, 1), np.clip(lower / lower[bottom], 0, 1), opening


def _smoothstep(edge0: np.ndarray | float, edge1: np.ndarray | float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (np.asarray(edge1) - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _left(a: Anatomy, index: int) -> np.ndarray:
    """Position of the subject's-left counterpart of a right-side landmark index."""
    return a.point(int(a.mirror[index]))


# ---- expression ------------------------------------------------------------------------------
# Each builder returns the displacement field (468,3) at coefficient 1. Builders named *Left
# produce the subject's-left shape; the *Right twin is its mirror.

def _jaw_open(a: Anatomy) -> np.ndarray:
    # Linearised rotation of the lower jaw about a left-right axis near the ears (the TMJ).
    pivot = np.array([0.0, 0.5 * (a.point(234)[1] + a.point(1)[1]), a.point(234)[2] + 0.05])
    angle = 0.45
    rel = a.shape - pivot
    return a.lower_face()[:, None] * angle * np.stack([np.zeros(len(rel)), -rel[:, 2], rel[:, 1]], -1)


def _jaw_forward(a: Anatomy) -> np.ndarray:
    return a.lower_face()[:, None] * np.array([0.0, 0.0, 0.07])


def _jaw_left(a: Anatomy) -> np.ndarray:
    return a.lower_face()[:, None] * np.array([0.07, 0.0, 0.0])


def _mouth_smile_left(a: Anatomy) -> np.ndarray:
    corner = a.point(291)
    pull = a.gaussian(corner, 0.11)[:, None] * np.array([0.045, 0.055, -0.03])
    cheek = a.gaussian(corner + np.array([0.06, 0.14, 0.0]), 0.1)[:, None] * np.array([0.0, 0.03, 0.015])
    return pull + cheek


def _mouth_frown_left(a: Anatomy) -> np.ndarray:
    corner = a.point(291)
    return a.gaussian(corner + np.array([0.0, -0.04, 0.0]), (0.08, 0.1, 0.2))[:, None] * np.array([0.0, -0.06, 0.0])


def _mouth_stretch_left(a: Anatomy) -> np.ndarray:
    corner = a.point(291)
    return a.gaussian(corner, (0.16, 0.06, 0.2))[:, None] * np.array([0.06, -0.015, -0.01])


def _mouth_upper_up_left(a: Anatomy) -> np.ndarray:
    centre = 0.5 * (a.point(0) + a.point(291))
    return ((1.0 - a.lower_face()) * a.gaussian(centre, 0.06))[:, None] * np.array([0.0, 0.04, 0.005])


def _mouth_lower_down_left(a: Anatomy) -> np.ndarray:
    centre = 0.5 * (a.point(17) + a.point(291))
    return (a.lower_face() * a.gaussian(centre, 0.06))[:, None] * np.array([0.0, -0.04, 0.005])


def _mouth_left(a: Anatomy) -> np.ndarray:
    return a.lips()[:, None] * np.array([0.07, 0.0, 0.0])


def _mouth_pucker(a: Anatomy) -> np.ndarray:
    x = a.shape[:, 0]
    return a.lips()[:, None] * np.stack([-0.35 * x, np.zeros_like(x), np.full_like(x, 0.06)], -1)


def _mouth_funnel(a: Anatomy) -> np.ndarray:
    x = a.shape[:, 0]
    opening = 1.0 - 2.0 * a.lower_face()  # +1 on the upper lip, -1 on the lower lip
    return a.lips()[:, None] * np.stack([-0.15 * x, 0.03 * opening, np.full_like(x, 0.05)], -1)


def _mouth_roll_lower(a: Anatomy) -> np.ndarray:
    return (a.lips() * a.lower_face())[:, None] * np.array([0.0, 0.015, -0.045])


def _mouth_roll_upper(a: Anatomy) -> np.ndarray:
    return (a.lips() * (1.0 - a.lower_face()))[:, None] * np.array([0.0, -0.015, -0.045])


def _cheek_puff(a: Anatomy) -> np.ndarray:
    left = _left(a, 50) + np.array([0.0, -0.13, 0.0])
    field = a.gaussian(left, 0.1)[:, None] * np.array([0.05, 0.0, 0.03])
    return field + a.mirror_field(field)


def _cheek_squint_left(a: Anatomy) -> np.ndarray:
    return a.gaussian(_left(a, 50) + np.array([0.0, 0.08, 0.0]), 0.07)[:, None] * np.array([0.0, 0.035, 0.01])


def _nose_sneer_left(a: Anatomy) -> np.ndarray:
    return a.gaussian(_left(a, 129), 0.05)[:, None] * np.array([0.0, 0.03, 0.01])


def _brow_inner_up(a: Anatomy) -> np.ndarray:
    field = a.gaussian(_left(a, 107), (0.07, 0.06, 0.2))[:, None] * np.array([0.0, 0.06, 0.0])
    return field + a.mirror_field(field)


def _brow_outer_up_left(a: Anatomy) -> np.ndarray:
    return a.gaussian(_left(a, 70), (0.08, 0.06, 0.2))[:, None] * np.array([0.0, 0.05, 0.0])


def _brow_down_left(a: Anatomy) -> np.ndarray:
    return a.gaussian(_left(a, 105), (0.12, 0.06, 0.2))[:, None] * np.array([-0.025, -0.045, 0.0])


def _eye_blink_left(a: Anatomy) -> np.ndarray:
    upper, lower, opening = a.eye("left")
    return upper[:, None] * np.array([0.0, -0.8 * opening, 0.005]) + lower[:, None] * np.array([0.0, 0.2 * opening, 0.0])


def _eye_wide_left(a: Anatomy) -> np.ndarray:
    upper, lower, opening = a.eye("left")
    lid = a.gaussian(a.point(386) + np.array([0.0, 0.02, 0.0]), (0.08, 0.05, 0.2))
    return lid[:, None] * np.array([0.0, 0.35 * opening, 0.0]) + lower[:, None] * np.array([0.0, -0.15 * opening, 0.0])


def _eye_squint_left(a: Anatomy) -> np.ndarray:
    _, lower, opening = a.eye("left")
    outer = a.gaussian(a.point(263), 0.05)[:, None] * np.array([-0.01, 0.01, 0.0])
    return lower[:, None] * np.array([0.0, 0.35 * opening, 0.0]) + outer


ExpressionBuilder = Callable[[Anatomy], np.ndarray]

# name -> builder; a name ending in "Left" also defines its mirrored "Right" twin.
_EXPRESSION_BUILDERS: dict[str, ExpressionBuilder] = {
    "jawOpen": _jaw_open,
    "jawForward": _jaw_forward,
    "jawLeft": _jaw_left,
    "mouthSmileLeft": _mouth_smile_left,
    "mouthFrownLeft": _mouth_frown_left,
    "mouthStretchLeft": _mouth_stretch_left,
    "mouthUpperUpLeft": _mouth_upper_up_left,
    "mouthLowerDownLeft": _mouth_lower_down_left,
    "mouthLeft": _mouth_left,
    "mouthPucker": _mouth_pucker,
    "mouthFunnel": _mouth_funnel,
    "mouthRollLower": _mouth_roll_lower,
    "mouthRollUpper": _mouth_roll_upper,
    "cheekPuff": _cheek_puff,
    "cheekSquintLeft": _cheek_squint_left,
    "noseSneerLeft": _nose_sneer_left,
    "browInnerUp": _brow_inner_up,
    "browOuterUpLeft": _brow_outer_up_left,
    "browDownLeft": _brow_down_left,
    "eyeBlinkLeft": _eye_blink_left,
    "eyeWideLeft": _eye_wide_left,
    "eyeSquintLeft": _eye_squint_left,
}


def build_expression_basis(anatomy: Anatomy) -> tuple[list[str], np.ndarray]:
    """Names and displacement fields ``(K, 468, 3)`` of the expression blendshapes."""
    names, fields = [], []
    for name, build in _EXPRESSION_BUILDERS.items():
        field = build(anatomy)
        names.append(name)
        fields.append(field)
        if name.endswith("Left"):
            names.append(name[: -len("Left")] + "Right")
            fields.append(anatomy.mirror_field(field))
    return names, np.stack(fields)


ANTAGONISTS = (("jawLeft", "jawRight"), ("mouthLeft", "mouthRight"))


# ---- identity --------------------------------------------------------------------------------
# Builders give the deformation of a +1 standard deviation identity.

def _scale_about(a: Anatomy, weight: np.ndarray, centre: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    return weight[:, None] * (a.shape - centre) * np.asarray(factors)


def _identity_fields(a: Anatomy) -> dict[str, np.ndarray]:
    ones = np.ones(len(a.shape))
    y = a.shape[:, 1]
    mouth = 0.5 * (a.point(13) + a.point(14))
    nose_centre = a.point(4)
    lower = _smoothstep(mouth[1] + 0.1, mouth[1] - 0.1, y)
    upper = _smoothstep(a.point(107)[1] - 0.05, a.point(107)[1] + 0.1, y)
    nose = a.gaussian(nose_centre + np.array([0.0, 0.05, 0.0]), (0.1, 0.16, 0.3))
    eye_left = a.gaussian(0.5 * (a.point(362) + a.point(263)), (0.09, 0.06, 0.2))
    eye_right = eye_left[a.mirror]
    eyes_x = (eye_left - eye_right)[:, None] * np.array([0.025, 0.0, 0.0])
    eye_size = sum(
        _scale_about(a, w, 0.5 * (a.point(i) + a.point(o)), (0.08, 0.12, 0.0))
        for w, i, o in ((eye_left, 362, 263), (eye_right, 133, 33))
    )
    # Lip thickness moves the outer lip contours away from the (fixed) line where the lips meet.
    inner_mid = 0.5 * (a.contour_y(a.regions["lips_inner_upper"], a.shape[:, 0])
                       + a.contour_y(a.regions["lips_inner_lower"], a.shape[:, 0]))
    away = np.clip((y - inner_mid) / 0.05, -1.0, 1.0)
    cheeks = a.gaussian(_left(a, 50), 0.12) + a.gaussian(a.point(50), 0.12)
    return {
        "faceWidth": _scale_about(a, ones, np.zeros(3), (0.06, 0.0, 0.0)),
        "faceLength": _scale_about(a, ones, np.zeros(3), (0.0, 0.06, 0.0)),
        "jawWidth": _scale_about(a, lower, mouth, (0.08, 0.0, 0.0)),
        "chinLength": lower[:, None] * np.array([0.0, -0.03, 0.0]) * np.clip(mouth[1] - y, 0, None)[:, None] / 0.35,
        "foreheadHeight": upper[:, None] * np.array([0.0, 0.03, 0.0]),
        "noseLength": nose[:, None] * np.array([0.0, -0.02, 0.01]),
        "noseWidth": _scale_about(a, nose, nose_centre, (0.12, 0.0, 0.0)),
        "noseProjection": a.gaussian(nose_centre, 0.07)[:, None] * np.array([0.0, 0.0, 0.025]),
        "eyeSpacing": eyes_x,
        "eyeSize": eye_size,
        "lipThickness": (a.lips() * away)[:, None] * np.array([0.0, 0.02, 0.0]),
        "cheekFullness": _scale_about(a, cheeks, np.zeros(3), (0.04, 0.0, 0.04)),
    }


def similarity_tangents(shape: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``(7, N*3)`` of the displacements made by small similarity transforms."""
    centred = shape - shape.mean(0)
    fields = [np.tile(np.eye(3)[i], (len(shape), 1)) for i in range(3)]
    fields += [np.cross(np.eye(3)[i], centred) for i in range(3)]
    fields.append(centred)
    q, _ = np.linalg.qr(np.stack([f.ravel() for f in fields], 1))
    return q.T


def build_identity_basis(anatomy: Anatomy) -> tuple[list[str], np.ndarray]:
    """Names and displacement fields ``(M, 468, 3)`` of the identity basis (similarity part removed)."""
    tangents = similarity_tangents(anatomy.shape)
    names, fields = [], []
    for name, field in _identity_fields(anatomy).items():
        flat = field.ravel()
        flat = flat - tangents.T @ (tangents @ flat)
        names.append(name)
        fields.append(flat.reshape(field.shape))
    return names, np.stack(fields)
