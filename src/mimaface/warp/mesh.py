"""The warp mesh: the face mesh with its holes covered, extended to the image border.

The face model's mesh ends at the face oval and has holes at the eyes and the mouth. To move a
whole picture with it, :class:`WarpMesh` adds, once per source, in the source's positions:

* **eye fans**: each eye hole is covered by a fan from its rim to a centre vertex (the rim's mean,
  set behind it), so the eye's content moves with the lids; when the lids meet the fan collapses
  and the lid skin stretches over the eye;
* **a mouth strip**: quads between the inner upper and lower lip contours (column k of one to
  column k of the other), so the mouth's content moves with the lips;
* **rings**: along the ray from the oval's centroid through every oval vertex, ring vertices at
  fractions ``rings`` of ``D = min(distance to the border, falloff x face radius)``, and the point
  where the ray meets the border; the image corners are added where consecutive rays meet
  different sides. Quads between consecutive rays and rings (split along their shorter diagonal)
  plus the corner triangles tile the picture outside the oval exactly, so the outer region
  shares the oval's vertices and no pixel is left uncovered.

Per frame a ring vertex moves by ``w`` times the head's motion at its place. The rings lie on a
head-shaped proxy: each one at its oval vertex's depth minus ``head_slope`` times its distance out
from it (the head's sides, hair and ears curve back from the face), so the head's rigid motion
(the pose change, applied in 3D and projected) turns them with parallax: a turn spreads the near
side and crowds the far side as a real head does, instead of sliding the head's outline as a flat
card. To that is added the non-rigid motion of its own oval vertex (the jaw, the cheeks).
``w = (1 - smoothstep(f / f_last)) x neck``, ``f`` the ring's fraction of ``D``: it decays
smoothly from 1 at the oval to 0 at the last ring, which holds still with everything beyond it
(border points and corners are fixed), and ``neck`` falls from 1 at the jaw line (the lower oval,
extended sideways) to 0 ``neck_falloff`` face radii below it (at most 0.7 of the way down to the
bottom border), so the neck, the shoulders and the bottom of the picture hold still while the head turns.
Fold-overs are guarded by clamping the ring vertices' motion: along each ray (oval, rings), a
vertex's motion may differ from its inner neighbour's, and then from its outer neighbour's, by at
most ``1 - min_gap`` of their source spacing, so no ray segment shrinks below ``min_gap`` of its
length or shears past its neighbours; the last ring is never moved, so the picture beyond it,
corners included, stays exactly the source's.

Lids and lips that the target closes further than the source's are pulled shut onto a smooth
line (the upper one a little over the lower one), and as they shut the lid rims read the source
beyond their next vertex out, the skin past the lashes (the stretched lash line would smear over
the closed eye; the eye painter draws a thin lash line instead).

Outer vertices lie far behind the face, so where a turned face overlaps the outer region the
face wins the z-test; eye-fan centres lie behind the eyes, so closing lids cover them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimaface.face3d.model import NUM_LANDMARKS, NUM_VERTICES, FaceModel
from mimaface.face3d.pose import apply_pose, pose_to_similarity
from mimaface.synthtalk.geometry import FaceLoops

# Triangle materials of the warp mesh.
MAT_FACE, MAT_EYE_LEFT, MAT_EYE_RIGHT, MAT_MOUTH, MAT_OUTER = range(5)
OUTER_Z = -10.0  # depth of the ring and border vertices: far behind the face
EYE_DEPTH = 0.35  # eye-fan centre behind its rim, in eye widths (as SynthTalk's eyeballs)
LID_OVERLAP = 0.25  # a shut upper lid reaches this fraction of the neutral opening below the lower lid's rim
LIP_OVERLAP = 0.01  # and a shut upper lip this far (model units) below the lower lip's inner edge
LID_SKIN = 0.6  # a shut lid's rim reads the skin this far (in rim-to-next-vertex spans) beyond its next vertex
NECK_ROOM = 0.7  # the neck zone reaches at most this fraction of the way from the jaw to the bottom border
UNFOLD_STEPS, MIN_AREA = 12, 0.05  # fold repair: relaxation steps, least kept fraction of a triangle's area
BLINK_SHUT = (0.5, 0.95)  # eyeBlink (over the source's) from which a lid is pulled shut, and fully
HOLE_SINK = 0.05  # how far (model units) the eye fans and mouth strip sink behind lids and lips pulled shut
IRIS_CENTRES = (473, 468)  # centre landmark of the subject's left and right iris (eye order below)
# The mesh's shape settings (WarpConfig's defaults too; see WarpMesh for their meaning).
RINGS, FALLOFF, NECK_FALLOFF, MIN_GAP = (0.25, 0.5, 0.8), 1.5, 0.5, 0.25
EYE_CLOSE, LIP_CLOSE = 0.25, 0.01
# Measured on SynthTalk identities 4-11 (exact renders as the truth, read by face3d): slopes 2, 4, 6
# and 8 read 0.21, 0.15, 0.11 and 0.11 degrees of pose worse than the truth, but from 4 on the hair
# beside a face turned 15 degrees creases against its cheek; 2 keeps it smooth.
HEAD_SLOPE = 2.0


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth S-curve in between."""
    t = np.clip((np.asarray(x, np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class Openings:
    """Index sets of the mesh's holes: lid and lip pairs facing each other across each hole."""

    eye_rims: tuple[np.ndarray, np.ndarray]  # (16,) rim loops, the subject's left eye first
    eye_upper: tuple[np.ndarray, np.ndarray]  # (7,) upper-lid rim vertices by increasing x
    eye_lower: tuple[np.ndarray, np.ndarray]  # (7,) the lower-lid vertices facing them
    eye_corners: tuple[np.ndarray, np.ndarray]  # (2,) the rims' corners by increasing x
    lips_upper: np.ndarray  # (11,) inner upper lip contour, corner to corner by increasing x
    lips_lower: np.ndarray  # (11,) inner lower lip contour, same corners
    oval: np.ndarray  # (36,) face-oval loop

    @classmethod
    def of(cls, model: FaceModel) -> Openings:
        loops = FaceLoops.of(model)
        mean = model.mean_shape
        uppers, lowers, corners = [], [], []
        for rim in (loops.eye_left, loops.eye_right):
            x = mean[rim, 0]
            a, b = int(np.argmin(x)), int(np.argmax(x))
            corners.append(rim[[a, b]])
            lo, hi = min(a, b), max(a, b)
            arcs = [rim[lo + 1:hi], np.concatenate([rim[hi + 1:], rim[:lo]])]
            arcs.sort(key=lambda arc: -mean[arc, 1].mean())
            if len(arcs[0]) != len(arcs[1]):
                raise ValueError("the eye rims' lids have different vertex counts")
            uppers.append(arcs[0][np.argsort(mean[arcs[0], 0])])
            lowers.append(arcs[1][np.argsort(mean[arcs[1], 0])])
        return cls((loops.eye_left, loops.eye_right), tuple(uppers), tuple(lowers), tuple(corners), loops.lips_upper,
                   loops.lips_lower, loops.oval)


def close_gaps(vertices: np.ndarray, source_vertices: np.ndarray, upper: np.ndarray, lower: np.ndarray,
               corners: np.ndarray, threshold: np.ndarray, overlap: np.ndarray | float = 0.0,
               together: bool = False, at_least: np.ndarray | None = None) -> np.ndarray:
    """Pull facing lid (or lip) vertices together where the target's gap closes below ``threshold``.

    ``vertices`` (B,468,3) target and ``source_vertices`` (468,3) model-space shapes; ``upper`` and
    ``lower`` (P,) facing vertex pairs between the two ``corners``; ``threshold`` (P,) gap (model
    units) under which a pair is pulled together, fully below 40 % of it, onto the line where
    the lids meet: the least-squares parabola (in x) through the corners and the pairs' mid-heights,
    the lower one onto it, the upper one ``overlap`` below it and as far in front (a shut upper lid
    covers the lower lid's rim). The pull is measured from the source's own gap, so a pair no more
    closed than in the source is not moved (identity stays exact), and lids crossing each other
    meet instead of folding. ``together``: the pairs shut as one, by their mean gap (an eye: the
    face model's blink leaves the corners a little open); ``at_least`` (B,): a least pull per
    frame. Moves only heights and depths: moving along the lid would make it zigzag. Changes
    ``vertices`` in place; returns the pull (B,P) in [0, 1].
    """
    gap = vertices[:, upper, 1] - vertices[:, lower, 1]
    source_gap = source_vertices[upper, 1] - source_vertices[lower, 1]
    threshold = np.broadcast_to(np.asarray(threshold, np.float64), source_gap.shape)
    if together:
        gap, source_gap, threshold = (a.mean(-1, keepdims=True) for a in (gap, source_gap, threshold))

    def shut(value: np.ndarray) -> np.ndarray:  # 1 below 40 % of the threshold, 0 above it
        return 1.0 - smoothstep(0.4, 1.0, value / threshold)

    source_shut = shut(source_gap)
    pull = np.clip((shut(gap) - source_shut) / np.maximum(1.0 - source_shut, 1e-9), 0.0, 1.0)
    pull = np.where(gap >= source_gap, 0.0, pull)
    if at_least is not None:
        pull = np.maximum(pull, np.asarray(at_least, np.float64)[:, None])
    pull = np.broadcast_to(pull, (len(vertices), len(upper)))
    # The meeting line: corners (weighted firmly) and pair mid-heights, a parabola in x per frame.
    x = np.concatenate([vertices[:, corners, 0], 0.5 * (vertices[:, upper, 0] + vertices[:, lower, 0])], 1)
    y = np.concatenate([vertices[:, corners, 1], 0.5 * (vertices[:, upper, 1] + vertices[:, lower, 1])], 1)
    weight = np.concatenate([np.full(len(corners), 10.0), np.ones(len(upper))])
    centre = x.mean(1, keepdims=True)
    design = np.stack([np.ones_like(x), x - centre, (x - centre) ** 2], -1)  # (B,n,3)
    normal = np.einsum("bni,n,bnj->bij", design, weight, design)
    coef = np.linalg.solve(normal, np.einsum("bni,n,bn->bi", design, weight, y))
    meet = np.einsum("bpi,bi->bp", design[:, len(corners):], coef)
    overlap = np.asarray(overlap, np.float64)
    vertices[:, upper, 1] += pull * (meet - overlap - vertices[:, upper, 1])
    vertices[:, upper, 2] += pull * overlap
    vertices[:, lower, 1] += pull * (meet - vertices[:, lower, 1])
    return pull


@dataclass
class Target:
    """One batch of target frames."""

    vertices: np.ndarray  # (B,V,3) warp-mesh vertices, normalised image coordinates
    shape: np.ndarray  # (B,468,3) model-space face (expression applied, lids and lips closed where they shut)
    source: np.ndarray  # (B,V,2) where each vertex reads the source (WarpMesh.source, lid rims slid as they shut)
    pulled: np.ndarray  # (B,468) how far each lid and lip vertex was pulled shut, in [0, 1]


def _complex(points: np.ndarray) -> np.ndarray:
    """x + iy of points (..., 2+)."""
    return points[..., 0] + 1j * points[..., 1]


def _ray_to_border(origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance from ``origin`` (N,2) along unit ``direction`` (N,2) to the border of [-1, 1]^2."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(direction > 0, (1.0 - origin) / direction,
                     np.where(direction < 0, (-1.0 - origin) / direction, np.inf))
    return t.min(1)


def _quads(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Two triangles per quad (a, b, d, c) (a-b one ring, c-d the next), split on the shorter diagonal."""
    ad = np.linalg.norm(points[a] - points[d], axis=1)
    bc = np.linalg.norm(points[b] - points[c], axis=1)
    first = np.where((ad <= bc)[:, None], np.stack([a, b, d], 1), np.stack([a, b, c], 1))
    second = np.where((ad <= bc)[:, None], np.stack([a, d, c], 1), np.stack([b, d, c], 1))
    return np.concatenate([first, second])


class WarpMesh:
    """The extended mesh of one source (see the module notes), and its target positions per frame.

    Vertex layout: the 478 landmarks (face mesh, then irises, which no triangle uses), the two
    eye-fan centres, copies of the eye rims and inner lip contours (``copy_idx``, of ``copied``)
    that the eye fans and the mouth strip use, the ring vertices (ring-major, one per oval vertex),
    the border points (one per oval vertex) and the four image corners. ``source`` (V,3) holds the
    source positions in normalised image coordinates (the crop is square: x and y in [-1, 1]).
    ``landmarks``: detected source landmarks (478,2+), normalised, that the source mesh is pinned to
    (see :meth:`_fit_residual`); without them the fit's own landmarks are used.
    """

    def __init__(self, model: FaceModel, identity: np.ndarray, pose: np.ndarray, expression: np.ndarray,
                 gaze: np.ndarray, *, rings: tuple[float, ...] = RINGS, falloff: float = FALLOFF,
                 neck_falloff: float = NECK_FALLOFF, min_gap: float = MIN_GAP, eye_close: float = EYE_CLOSE,
                 lip_close: float = LIP_CLOSE, head_slope: float = HEAD_SLOPE,
                 landmarks: np.ndarray | None = None) -> None:
        if not rings or any(not 0.0 < f < 1.0 for f in rings) or list(rings) != sorted(rings):
            raise ValueError(f"rings must be increasing fractions in (0, 1), got {rings}")
        self.model = model
        self.openings = op = Openings.of(model)
        self.identity = np.asarray(identity, np.float64)
        self.rings = np.asarray(rings, np.float64)
        self.min_gap = float(min_gap)
        pose, expression, gaze = (np.asarray(a, np.float64) for a in (pose, expression, gaze))
        self._model_shape = model.vertices(self.identity, expression)  # the fit, model space
        self._source_expression = expression
        self._blink_columns = [model.expression_names.index(n) for n in ("eyeBlinkLeft", "eyeBlinkRight")]
        neutral = model.vertices(self.identity)
        # Lid pairs are pulled shut below a fraction of the neutral opening; lips below lip_close.
        openings = [np.maximum(neutral[u, 1] - neutral[lo, 1], 1e-3) for u, lo in zip(op.eye_upper, op.eye_lower)]
        self._eye_threshold = [eye_close * o for o in openings]
        self._eye_overlap = [LID_OVERLAP * o for o in openings]
        self._lip_pairs = (op.lips_upper[1:-1], op.lips_lower[1:-1])
        self._lip_threshold = np.full(len(self._lip_pairs[0]), float(lip_close))
        self._pairs = [*zip(op.eye_upper, op.eye_lower), self._lip_pairs]
        self._residual = np.zeros((NUM_LANDMARKS, 3))
        self.source_shape = self._model_shape
        if landmarks is not None:
            self._fit_residual(np.asarray(landmarks, np.float64), pose, gaze)
        points = self.landmarks(self.source_shape[None], pose[None], gaze[None])[0]
        oval = op.oval
        o = points[oval, :2]
        centre = o.mean(0)
        rel = o - centre
        radius = np.linalg.norm(rel, axis=1)
        if radius.min() <= 0:
            raise ValueError("degenerate face oval")
        self.face_radius = float(radius.mean())
        u = rel / radius[:, None]
        angle = np.arctan2(u[:, 1], u[:, 0])
        turn = np.angle(np.exp(1j * (np.roll(angle, -1) - angle)))  # wrapped to (-pi, pi]
        if not (np.all(turn > 0) or np.all(turn < 0)):
            raise ValueError("the source's face oval is not star-shaped around its centre (a face turned too far)")
        n = len(oval)
        t = np.maximum(_ray_to_border(o, u), 0.05 * self.face_radius)
        reach = np.minimum(t, falloff * self.face_radius)
        self._ray_u, self._ray_reach, self._ray_t = u, reach, t

        # Vertex blocks: landmarks, eye centres, duplicates of the hole rims, rings, border points, corners.
        # The eye fans and the mouth strip use their own copies of the rims, so a closing lid or lip can
        # sink them behind itself; copies are numbered in their originals' order, which keeps the
        # rasteriser's shared-edge rule (edges run from their lower-numbered vertex) and so no cracks.
        ring_xy = o[None] + u[None] * (self.rings[:, None, None] * reach[None, :, None])  # (K,n,2)
        # The rings' places on the head proxy, in model space (they move rigidly with the head).
        ring_depth = points[oval, 2][None] - head_slope * np.linalg.norm(ring_xy - o[None], axis=-1)
        rot, trans, scale = pose_to_similarity(pose)
        self._ring_model = (np.concatenate([ring_xy, ring_depth[..., None]], -1) - trans) @ rot / scale
        self._oval_model = (points[oval] - trans) @ rot / scale
        border_xy = o + u * t[:, None]
        corners = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
        k = len(self.rings)
        self.eye_centre_idx = NUM_LANDMARKS + np.arange(2)
        self.copied = np.unique(np.concatenate([*op.eye_rims, op.lips_upper, op.lips_lower]))  # originals, sorted
        copy_of = np.full(NUM_LANDMARKS, -1)
        copy_of[self.copied] = NUM_LANDMARKS + 2 + np.arange(len(self.copied))
        self.copy_idx = copy_of[self.copied]
        first_outer = NUM_LANDMARKS + 2 + len(self.copied)
        self.ring_idx = first_outer + np.arange(k * n).reshape(k, n)
        self.border_idx = first_outer + k * n + np.arange(n)
        self.corner_idx = self.border_idx[-1] + 1 + np.arange(4)
        outer_xy = np.concatenate([ring_xy.reshape(-1, 2), border_xy, corners])
        outer = np.concatenate([outer_xy, np.full((len(outer_xy), 1), OUTER_Z)], 1)
        self.num_vertices = first_outer + len(outer)
        source = np.concatenate([points, self._eye_centres(points[None])[0], points[self.copied], outer])
        self.source = source

        # Triangles.
        faces = [model.triangles]
        material = [np.full(len(model.triangles), MAT_FACE)]
        for e, rim in enumerate(op.eye_rims):
            rim = copy_of[rim]
            faces.append(np.stack([rim, np.roll(rim, -1), np.full(len(rim), self.eye_centre_idx[e])], 1))
            material.append(np.full(len(rim), (MAT_EYE_LEFT, MAT_EYE_RIGHT)[e]))
        self.mouth_upper, self.mouth_lower = up, lo = copy_of[op.lips_upper], copy_of[op.lips_lower]
        # Quads (upper k, upper k+1, lower k+1, lower k); at the shared corners one triangle is empty.
        mouth = np.concatenate([np.stack([up[:-1], up[1:], lo[1:]], 1)[:-1],
                                np.stack([up[:-1], lo[1:], lo[:-1]], 1)[1:]])
        faces.append(mouth)
        material.append(np.full(len(mouth), MAT_MOUTH))
        chain = np.concatenate([oval[None], self.ring_idx, self.border_idx[None]])  # (k+2, n)
        nxt = np.roll(np.arange(n), -1)
        outer_tris = [_quads(chain[r], chain[r][nxt], chain[r + 1], chain[r + 1][nxt], source[:, :2])
                      for r in range(k + 1)]
        outer_tris.append(self._corner_triangles(centre, angle, turn[0] > 0, corners))
        outer_tris = np.concatenate(outer_tris)
        # The outer triangles over [oval, rings, border, corners] stacked, for the per-frame fold check.
        local = np.full(self.corner_idx[-1] + 1, -1)
        local[oval] = np.arange(n)
        local[self.ring_idx[0, 0]:] = n + np.arange(self.corner_idx[-1] + 1 - self.ring_idx[0, 0])
        self._outer_local = local[outer_tris]
        faces.append(outer_tris)
        material.append(np.full(len(outer_tris), MAT_OUTER))
        self.faces = np.concatenate(faces).astype(np.int64)
        self.material = np.concatenate(material).astype(np.int64)
        # Each lid rim vertex's next vertex out: its neighbour furthest up (upper lid) or down (lower lid).
        tris = model.triangles
        edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
        rim_vertices, out_vertices = [], []
        for rim, upper, lower in zip(op.eye_rims, op.eye_upper, op.eye_lower):
            for v, up in [(v, 1.0) for v in upper] + [(v, -1.0) for v in lower]:
                near = np.unique(edges[(edges == v).any(1)])
                near = near[~np.isin(near, rim)]
                rim_vertices.append(v)
                out_vertices.append(near[np.argmax(up * model.mean_shape[near, 1])])
        self.lid_rim, self.lid_out = np.array(rim_vertices), np.array(out_vertices)
        # One slide per lid (its mean step out, 1 + LID_SKIN times): the lid reads a band parallel to its rim.
        step = (self.source[self.lid_out, :2] - self.source[self.lid_rim, :2]).reshape(-1, len(op.eye_upper[0]), 2)
        self._lid_slide = np.repeat((1.0 + LID_SKIN) * step.mean(1), step.shape[1], 0)

        # Outer weights: the decay along each ray times the neck factor below the jaw line.
        ring_w = 1.0 - smoothstep(0.0, self.rings[-1], self.rings)  # the last ring holds still
        lower = model.mean_shape[oval, 1] < model.mean_shape[61, 1]  # the oval below the mouth corners
        first = int(np.nonzero(lower & ~np.roll(lower, 1))[0][0])
        jaw = o[np.roll(np.arange(n), -first)[: int(lower.sum())]]
        jaw = jaw[np.argsort(jaw[:, 0])]
        jaw_y = np.interp(ring_xy[..., 0], jaw[:, 0], jaw[:, 1])
        # The neck zone: neck_falloff face radii deep, at most NECK_ROOM of the way down to the border (y = -1).
        depth = np.minimum(neck_falloff * self.face_radius, NECK_ROOM * (jaw_y + 1.0))
        below = (jaw_y - ring_xy[..., 1]) / np.maximum(depth, 1e-6)
        self.ring_weight = ring_w[:, None] * (1.0 - smoothstep(0.0, 1.0, below))  # (k, n)

    def _fit_residual(self, landmarks: np.ndarray, pose: np.ndarray, gaze: np.ndarray) -> None:
        """Make the source mesh pass through detected ``landmarks`` (478,2+) exactly in the image plane.

        The offsets from the fit to the detections, taken in the image plane at the fitted depth and
        turned into model space, are kept as a per-vertex residual that every frame carries along
        with the head (see :meth:`shape`).
        """
        if landmarks.shape[0] != NUM_LANDMARKS or landmarks.ndim != 2 or not np.isfinite(landmarks[:, :2]).all():
            raise ValueError(f"landmarks must be ({NUM_LANDMARKS}, 2 or 3) finite values, got {landmarks.shape}")
        rot, trans, scale = pose_to_similarity(pose)

        def unposed(points: np.ndarray, fitted: np.ndarray) -> np.ndarray:
            """Model-space positions of the detected image positions of ``points`` at ``fitted``'s depth."""
            detected = fitted.copy()
            detected[:, :2] = points[:, :2]
            return (detected - trans) @ rot / scale

        fitted = apply_pose(self._model_shape, pose)
        self._residual[:NUM_VERTICES] = unposed(landmarks[:NUM_VERTICES], fitted) - self._model_shape
        corrected = self._model_shape + self._residual[:NUM_VERTICES]
        iris = self.model.iris_points(corrected, gaze)
        self._residual[NUM_VERTICES:] = unposed(landmarks[NUM_VERTICES:], apply_pose(iris, pose)) - iris
        self.source_shape = corrected

    # -- per frame ------------------------------------------------------------------------------
    def shape(self, expression: np.ndarray, *, collapse: bool = True) -> np.ndarray:
        """Model-space face vertices (B,468,3) for expressions (B,K), with the source's landmark residual;
        ``collapse``: lids and lips that close further than in the source are pulled shut (see
        :func:`close_gaps`)."""
        return self._shape(expression, collapse)[0]

    def _shape(self, expression: np.ndarray, collapse: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`shape`, and how far each vertex was pulled shut (B,468) in [0, 1]."""
        verts = self.model.vertices(self.identity, expression)
        residual = np.broadcast_to(self._residual[:NUM_VERTICES], verts.shape).copy()
        # Across the eyes and the mouth the residual shrinks with the model's opening, so lids and
        # lips that the model closes do close (it is kept whole where they open as far or further).
        for upper, lower in self._pairs:
            source_gap = self._model_shape[upper, 1] - self._model_shape[lower, 1]
            gap = verts[:, upper, 1] - verts[:, lower, 1]
            ratio = np.where((gap >= source_gap) | (source_gap <= 0), 1.0,
                             np.clip(gap / np.where(source_gap > 0, source_gap, 1.0), 0.0, 1.0))
            residual[:, upper] *= ratio[..., None]
            residual[:, lower] *= ratio[..., None]
        verts += residual
        pulled = np.zeros(verts.shape[:2])
        if collapse:
            thresholds = [*self._eye_threshold, self._lip_threshold]
            overlaps = [*self._eye_overlap, LIP_OVERLAP]
            corners = [*self.openings.eye_corners, self.openings.lips_upper[[0, -1]]]
            together = [True, True, False]  # eyes shut as one, lips pair by pair
            # A blink shuts the eye whatever else the lids do (eyeWide keeps the model's blink ajar).
            blinks = [self._blink(expression, column) for column in self._blink_columns] + [None]
            for (upper, lower), ends, threshold, overlap, whole, blink in zip(
                    self._pairs, corners, thresholds, overlaps, together, blinks):
                pull = close_gaps(verts, self.source_shape, upper, lower, ends, threshold, overlap, whole, blink)
                pulled[:, upper] = pulled[:, lower] = pull
        return verts, pulled

    def _blink(self, expression: np.ndarray, column: int) -> np.ndarray:
        """(B,) how far a blink rising over the source's shuts its eye: smoothstep(0.5, 0.95) of the
        blink coefficient, measured from the source's."""
        def shut(value: np.ndarray) -> np.ndarray:
            return smoothstep(BLINK_SHUT[0], BLINK_SHUT[1], value)

        source = shut(self._source_expression[column])
        return np.clip((shut(np.asarray(expression)[:, column]) - source) / max(1.0 - source, 1e-9), 0.0, 1.0)

    def landmarks(self, shape: np.ndarray, pose: np.ndarray, gaze: np.ndarray) -> np.ndarray:
        """The 478 landmarks (B,478,3) in normalised coordinates of model-space ``shape`` (B,468,3)."""
        iris = self.model.iris_points(shape, gaze) + self._residual[NUM_VERTICES:]
        return apply_pose(np.concatenate([shape, iris], 1), pose)

    def target(self, pose: np.ndarray, expression: np.ndarray, gaze: np.ndarray) -> Target:
        """Target positions of every warp-mesh vertex for per-frame coefficients (B,·)."""
        shape, pulled = self._shape(expression, True)
        landmarks = self.landmarks(shape, pose, gaze)
        out = np.empty((len(landmarks), self.num_vertices, 3))
        out[:, :NUM_LANDMARKS] = landmarks
        out[:, self.eye_centre_idx] = self._eye_centres(landmarks)
        out[:, self.copy_idx] = landmarks[:, self.copied]
        # Where lids or lips are pulled shut, the fill behind them sinks, so it cannot show through.
        out[:, self.copy_idx, 2] -= (HOLE_SINK * np.asarray(pose, np.float64)[:, 5:6]) * pulled[:, self.copied]
        out[:, self.ring_idx[0, 0]:] = self.source[self.ring_idx[0, 0]:]
        out[:, self.ring_idx, :2] = self._ring_targets(landmarks[:, self.openings.oval, :2], pose)
        # Shutting lid rims read the skin beyond their next vertices out, mirrored, instead of the lashes.
        source = np.repeat(self.source[None, :, :2], len(out), 0)
        source[:, self.lid_rim] += pulled[:, self.lid_rim, None] * self._lid_slide
        return Target(out, shape, source, pulled)

    def _eye_centres(self, landmarks: np.ndarray) -> np.ndarray:
        out = []
        for rim in self.openings.eye_rims:
            ring = landmarks[:, rim]
            width = np.ptp(ring[..., 0], axis=1)
            centre = ring.mean(1)
            centre[:, 2] -= EYE_DEPTH * width
            out.append(centre)
        return np.stack(out, 1)

    def _ring_targets(self, oval: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """(B,k,n,2) target ring positions for target oval positions (B,n,2) and poses (B,6).

        Frames whose outer mesh still folds after :meth:`_unfold` (far turns combined with strong
        tilts, where the far side of the head crowds behind the face) are redone with the head
        proxy's parallax halved, then without it."""
        zt = _complex(oval)
        pose = np.asarray(pose, np.float64)
        rings, folded = self._unfold(zt, self._ring_motion(zt, pose, 1.0))
        for parallax in (0.5, 0.0):
            if not folded.any():
                break
            rings[folded], folded[folded] = self._unfold(zt[folded], self._ring_motion(zt[folded], pose[folded], parallax))
        return np.stack([rings.real, rings.imag], -1)

    def _ring_motion(self, zt: np.ndarray, pose: np.ndarray, parallax: float) -> np.ndarray:
        """(B,k,n) clamped ring positions (complex) for the target oval (B,n), with ``parallax`` of the
        head proxy's depth."""
        zs = _complex(self.source[self.openings.oval])
        zr = _complex(self.source[self.ring_idx])  # (k,n)
        rings = self._ring_model.reshape(-1, 3)
        if parallax != 1.0:  # the proxy's depth, scaled about the oval vertex's
            rings = (self._oval_model[None] + parallax * (self._ring_model - self._oval_model[None])).reshape(-1, 3)
        rigid_rings = _complex(apply_pose(rings, pose)).reshape(len(pose), *zr.shape)
        rigid_oval = _complex(apply_pose(self._oval_model, pose))  # (B,n)
        moved = rigid_rings + (zt - rigid_oval)[:, None]  # the head's rigid motion + the oval's own (B,k,n)
        disp = self.ring_weight[None] * (moved - zr[None])
        # Fold guard: along each ray (oval, rings, border), a vertex's motion differs from its inner
        # neighbour's, then from its outer neighbour's, by at most 1 - min_gap of their spacing.
        along = np.concatenate([np.zeros((1, len(self._ray_t))), self.rings[:, None] * self._ray_reach[None],
                                self._ray_t[None]])
        spacing = np.diff(along, axis=0)  # (k+1, n)
        limit = (1.0 - self.min_gap) * spacing

        def within(value: np.ndarray, anchor: np.ndarray, bound: np.ndarray) -> np.ndarray:
            step = value - anchor
            size = np.abs(step)
            return anchor + step * np.minimum(1.0, bound / np.maximum(size, 1e-12))

        inner = zt - zs  # the oval vertex's own motion
        last = len(self.rings) - 1  # the last ring holds still (its weight is 0), as the border does
        for r in range(last):
            disp[:, r] = inner = within(disp[:, r], inner, limit[r])
        outer = disp[:, last]
        for r in reversed(range(last)):
            disp[:, r] = outer = within(disp[:, r], outer, limit[r + 1])
        return zr[None] + disp

    def _unfold(self, oval: np.ndarray, rings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Relax ring vertices (B,k,n) (complex positions) of outer triangles that would still fold,
        given the oval's target (B,n): each one's motion is pulled halfway to the mean of its four
        neighbours' on the polar grid (inner: the previous ring or the oval; outer: the next ring
        or the fixed border; and the neighbouring rays; the last ring is not moved), until no outer triangle keeps less than
        MIN_AREA of its source area or the steps run out. Frames that do not fold are untouched.
        Returns the rings and which frames still fold (B,)."""
        b, k, n = rings.shape
        fixed = self.source[self.border_idx[0]:, :2]
        fixed = np.broadcast_to(_complex(fixed), (b, len(fixed)))
        source = self.source[self._outer_order(), :2]
        source = _complex(source)
        corners = source[self._outer_local]
        source_area = ((corners[:, 1] - corners[:, 0]) * np.conj(corners[:, 2] - corners[:, 0])).imag
        rest = source[n:n + k * n].reshape(k, n)
        oval_motion = (oval - source[:n])[:, None]
        for step in range(UNFOLD_STEPS + 1):
            points = np.concatenate([oval, rings.reshape(b, -1), fixed], 1)[:, self._outer_local]  # (B,T,3)
            area = ((points[..., 1] - points[..., 0]) * np.conj(points[..., 2] - points[..., 0])).imag
            frame, tri = np.nonzero(area / source_area < MIN_AREA)
            if len(frame) == 0 or step == UNFOLD_STEPS:
                break
            flagged = np.zeros((b, n + k * n + fixed.shape[1]), bool)
            for corner in range(3):
                flagged[frame, self._outer_local[tri, corner]] = True
            move = flagged[:, n:n + k * n].reshape(b, k, n)
            move[:, -1] = False  # the last ring holds still, as the border does
            motion = rings - rest
            inner = np.concatenate([oval_motion, motion[:, :-1]], 1)
            outer = np.concatenate([motion[:, 1:], np.zeros_like(motion[:, :1])], 1)
            mean = 0.25 * (inner + outer + np.roll(motion, 1, 2) + np.roll(motion, -1, 2))
            rings = np.where(move, rest + 0.5 * (motion + mean), rings)
        folded = np.zeros(b, bool)
        folded[frame] = True
        return rings, folded

    def _outer_order(self) -> np.ndarray:
        """Global indices of the stacked [oval, rings, border, corners] vertices."""
        return np.concatenate([self.openings.oval, np.arange(self.ring_idx[0, 0], self.corner_idx[-1] + 1)])

    def _corner_triangles(self, centre: np.ndarray, ray_angle: np.ndarray, counter_clockwise: bool,
                          corners: np.ndarray) -> np.ndarray:
        """Triangles filling each image corner cut off between two consecutive border points."""
        sign = 1.0 if counter_clockwise else -1.0
        corner_angle = np.arctan2(corners[:, 1] - centre[1], corners[:, 0] - centre[0])
        n = len(ray_angle)
        tris = []
        for i in range(n):
            j = (i + 1) % n
            span = np.mod(sign * (ray_angle[j] - ray_angle[i]), 2 * np.pi)
            offset = np.mod(sign * (corner_angle - ray_angle[i]), 2 * np.pi)
            inside = np.nonzero((offset > 0) & (offset < span))[0]
            inside = inside[np.argsort(offset[inside])]
            fan = [int(self.border_idx[i])] + [int(self.corner_idx[c]) for c in inside] + [int(self.border_idx[j])]
            tris += [[fan[0], fan[m], fan[m + 1]] for m in range(1, len(fan) - 1)]
        return np.asarray(tris, np.int64).reshape(-1, 3)
