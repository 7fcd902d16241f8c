"""The 3D scene of a SynthTalk head: the face mesh plus the parts the face model lacks.

The face model is a mask: a frontal surface with holes at the eyes and the mouth. To render a
person we close it into a head and add what is behind and around it, as extra triangles that go
into the same rasteriser call as the face, so the z-buffer settles every occlusion:

* **eyeballs**: a fan per eye hole from its rim to a point behind it; the iris is painted on it per
  pixel (see :mod:`.scene`). When the lids close on a blink the rim closes and the fan vanishes.
* **mouth**: a "bag" from the inner lip contour to a point behind it, with a strip of teeth that
  hangs from each lip contour; the strips are as tall as the lips are apart (up to a tooth's
  height), so the teeth show when the mouth opens and disappear when it closes.
* **head cap**: from every face-oval vertex a meridian runs over (or under, or round) the head to
  the back of it, bulging out to an ellipsoid skull; it is where the hair and the sides of the
  head are. Near the face it follows the oval, so the jaw's motion carries into it.
* **ears**: a cupped disc on each side, flared out from the head (for identities without long
  hair, whose curtain would hide them);
* **hair curtain** (long hair), **neck** and **torso** (shoulders and clothes); the torso turns with
  a damped copy of the head's pose, the neck and curtain blend from the head's pose at their top
  to the torso's at their bottom.

Vertices the face shares with a part (the eye rims, the lip contour, the oval) are duplicated for
that part so each can carry its own texture coordinates; a duplicate has the same position bit
for bit, and duplicates are numbered in the order of their originals, so the rasteriser's
shared-edge rule still sees the same edge (no cracks). For shading normals the duplicates are
welded back to their originals, so the face and the cap shade as one smooth surface.

Texture coordinates point into a 2x2 atlas (:func:`atlas_coords`): face, head cap, neck and hair
curtain, torso.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimaface.face3d.model import FaceModel
from mimaface.face3d.pose import apply_pose

# Materials, per triangle. Textured ones sample the atlas and are Lambert-shaded; the others are
# painted procedurally from their vertex attributes.
MAT_TEXTURED = 0
MAT_EYE_LEFT = 1  # the subject's left eye (+x in model space)
MAT_EYE_RIGHT = 2
MAT_TEETH = 3
MAT_MOUTH = 4

TILE_FACE, TILE_CAP, TILE_NECK, TILE_TORSO = 0, 1, 2, 3
ATLAS_MARGIN = 0.03  # fraction of a tile left empty round its edge, so bilinear lookups don't bleed

# The skull: an ellipsoid about HEAD_CENTRE with different radii forwards/backwards and up/down.
HEAD_CENTRE = np.array([0.0, 0.05, -0.55])
SKULL_RADII = {"x": 0.6, "up": 0.86, "down": 0.6, "front": 0.75, "back": 0.72}
NECK_CENTRE_Z = -0.5
NECK_TOP, NECK_BOTTOM = -0.15, -1.6
# The point the torso turns about (the base of the neck), in model space.
TORSO_PIVOT = np.array([0.0, -0.8, -0.5])
# How much of the head's rotation the torso follows (yaw, pitch, roll).
TORSO_FOLLOW = np.array([0.3, 0.12, 0.35])

CAP_RINGS = 14  # rings from the face oval to the back of the head
NECK_SEGMENTS, NECK_RINGS = 20, 6
CURTAIN_COLUMNS, CURTAIN_ROWS = 14, 8
TORSO_COLUMNS, TORSO_ROWS = 22, 8
TEETH_BACK = 0.012  # how far behind the lip contour the teeth are (model units)
MOUTH_DEPTH = 0.14  # depth of the mouth bag behind the lips
EYE_DEPTH = 0.35  # depth of the eyeball fan's centre behind its rim, in eye widths


def atlas_coords(tile: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``grid_sample`` coordinates (x, y in [-1, 1]) of point ``(u, v)`` in [0, 1]^2 of an atlas tile.

    Tiles are numbered row-major in a 2x2 atlas; ``v = 0`` is a tile's top row.
    """
    row, col = divmod(tile, 2)
    scale = 1.0 - 2.0 * ATLAS_MARGIN
    gx = -1.0 + col + ATLAS_MARGIN + np.asarray(u) * scale
    gy = -1.0 + row + ATLAS_MARGIN + np.asarray(v) * scale
    return np.stack(np.broadcast_arrays(gx, gy), -1)


def face_uv(mean_shape: np.ndarray) -> np.ndarray:
    """Cylindrical texture coordinates (V,2) in [0, 1] of face-mesh points (u across, v down)."""
    angle = np.arctan2(mean_shape[:, 0], mean_shape[:, 2] + FACE_UV_AXIS_Z)
    u = 0.5 + 0.5 * angle / FACE_UV_HALF_ANGLE
    v = (FACE_UV_TOP - mean_shape[:, 1]) / (FACE_UV_TOP - FACE_UV_BOTTOM)
    return np.stack([u, v], -1)


# The face's cylindrical UV: the axis is vertical, behind the face; these bounds contain the mesh.
FACE_UV_AXIS_Z = 0.6
FACE_UV_HALF_ANGLE = np.deg2rad(78.0)
FACE_UV_TOP, FACE_UV_BOTTOM = 0.63, -0.58


@dataclass(frozen=True)
class FaceLoops:
    """The face mesh's boundary loops, each ordered along the loop."""

    oval: np.ndarray  # (36,) starting at the top of the forehead
    eye_left: np.ndarray  # (16,)
    eye_right: np.ndarray
    lips_upper: np.ndarray  # (11,) inner upper lip contour, corner to corner by increasing x
    lips_lower: np.ndarray  # (11,) inner lower lip contour, same corners

    @classmethod
    def of(cls, model: FaceModel) -> FaceLoops:
        loops = boundary_loops(model.triangles)
        mean = model.mean_shape
        centres = [mean[loop].mean(0) for loop in loops]
        oval = loops[int(np.argmax([len(loop) for loop in loops]))]
        oval = np.roll(oval, -int(np.argmax(mean[oval, 1])))  # start at the top of the forehead
        eyes = [loop for loop, c in zip(loops, centres) if len(loop) < len(oval) and c[1] > 0.1]
        eye_left = next(loop for loop in eyes if mean[loop, 0].mean() > 0)
        eye_right = next(loop for loop in eyes if mean[loop, 0].mean() < 0)

        def by_x(indices: np.ndarray) -> np.ndarray:
            return indices[np.argsort(mean[indices, 0], kind="stable")]

        return cls(oval, eye_left, eye_right, by_x(model.regions["lips_inner_upper"]), by_x(model.regions["lips_inner_lower"]))


def boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """The boundary loops of a triangle mesh (edges used by one triangle), each in order."""
    edges = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), 1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    neighbours: dict[int, list[int]] = {}
    for a, b in unique[counts == 1]:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    loops, seen = [], set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            following = next(n for n in neighbours[current] if n != previous)
            if following == start:
                break
            loop.append(following)
            seen.add(following)
            previous, current = current, following
        loops.append(np.array(loop, dtype=np.int64))
    return loops


@dataclass(frozen=True)
class HeadStyle:
    """The shape parameters of the parts around the face, per identity (see :mod:`.appearance`)."""

    hair_thickness: np.ndarray  # (CAP_RINGS+1, 37) outward offset of the cap for hair volume
    long_hair: float  # 0 = no curtain; else how far below the chin the hair hangs (model units)
    hair_width: float  # curtain radius
    neck_radius: float
    shoulder_width: float  # half-width of the shoulders
    ears: bool = True  # drawn where no hair curtain hides them (they share its atlas region)


def cap_directions(oval_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (CAP_RINGS+1, 37, 3) from the head centre over the cap, and the ring fractions t.

    Column k runs along the great circle from the direction of oval vertex k to straight back;
    column 36 repeats column 0 (the texture seam).
    """
    t = np.linspace(0.0, 1.0, CAP_RINGS + 1) ** 1.35  # rings denser near the face
    d0 = oval_points - HEAD_CENTRE
    d0 = d0 / np.linalg.norm(d0, axis=-1, keepdims=True)
    d0 = np.concatenate([d0, d0[:1]])
    back = np.array([0.0, 0.0, -1.0])
    angle = np.arccos(np.clip(d0 @ back, -1.0, 1.0))  # (37,)
    sin = np.sin(angle)
    w0 = np.sin((1.0 - t)[:, None] * angle) / sin
    w1 = np.sin(t[:, None] * angle) / sin
    dirs = w0[..., None] * d0 + w1[..., None] * back
    return dirs / np.linalg.norm(dirs, axis=-1, keepdims=True), t


def skull_radius(directions: np.ndarray) -> np.ndarray:
    """Distance from HEAD_CENTRE to the skull ellipsoid along unit ``directions`` (...,3)."""
    r = SKULL_RADII
    ry = np.where(directions[..., 1] > 0, r["up"], r["down"])
    rz = np.where(directions[..., 2] > 0, r["front"], r["back"])
    return 1.0 / np.sqrt((directions[..., 0] / r["x"]) ** 2 + (directions[..., 1] / ry) ** 2 + (directions[..., 2] / rz) ** 2)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _grid_triangles(rows: int, cols: int, base: int) -> np.ndarray:
    """Triangles of a rows x cols vertex grid numbered row-major from ``base``."""
    idx = base + np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    return np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])


def _orient_outward(triangles: np.ndarray, points: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal (by winding) points towards ``inside`` points (per triangle)."""
    p = points[triangles]
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    flip = (normal * (p.mean(1) - inside)).sum(-1) < 0
    out = triangles.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out


class HeadGeometry:
    """One identity's scene mesh: topology, static attributes and per-frame vertex positions.

    Vertex blocks, in order: the 468 face vertices; duplicates of the oval for the cap (and one for
    the texture seam); the cap rings; eye rims (duplicates) and centres; lip contour duplicates,
    teeth rings and mouth centre; neck; hair curtain or ears; torso.
    """

    def __init__(self, model: FaceModel, identity: np.ndarray, style: HeadStyle):
        self.model = model
        self.identity = np.asarray(identity, np.float64)
        self.style = style
        self.loops = loops = FaceLoops.of(model)
        neutral = model.vertices(self.identity)
        self.neutral = neutral
        blocks: list[np.ndarray] = []  # static model-space positions (for orientation and rest shape)
        attrs: list[np.ndarray] = []  # (n,3): atlas x, atlas y, extra
        weld: list[np.ndarray] = []  # vertex whose shading normal each vertex takes
        faces: list[np.ndarray] = []
        materials: list[np.ndarray] = []
        shaded_faces: list[np.ndarray] = []  # triangles used for normals (in welded indices)
        count = model.mean_shape.shape[0]

        def add_vertices(points: np.ndarray, attributes: np.ndarray, welded: np.ndarray | None = None) -> np.ndarray:
            nonlocal count
            idx = np.arange(count, count + len(points))
            blocks.append(np.asarray(points, np.float64))
            attrs.append(np.asarray(attributes, np.float64))
            weld.append(idx if welded is None else np.asarray(welded))
            count += len(points)
            return idx

        def add_faces(tris: np.ndarray, material: int, shaded: bool) -> None:
            faces.append(tris)
            materials.append(np.full(len(tris), material))
            if shaded:
                shaded_faces.append(tris)

        def duplicates(originals: np.ndarray, attributes: np.ndarray) -> np.ndarray:
            """Duplicate ``originals`` (distinct), numbered in their order; returns the new indices."""
            order = np.argsort(originals)
            idx = add_vertices(neutral[originals[order]], attributes[order], originals[order])
            out = np.empty_like(idx)
            out[order] = idx
            return out

        # -- face -------------------------------------------------------------------------------
        uv = face_uv(model.mean_shape)
        blocks.insert(0, neutral)
        attrs.insert(0, np.concatenate([atlas_coords(TILE_FACE, uv[:, 0], uv[:, 1]), np.zeros((count, 1))], 1))
        weld.insert(0, np.arange(count))
        add_faces(model.triangles, MAT_TEXTURED, True)

        # -- head cap ---------------------------------------------------------------------------
        oval = loops.oval
        dirs, t = cap_directions(neutral[oval])
        self.cap_t = t
        cols = len(oval) + 1
        cap_u = np.linspace(0.0, 1.0, cols)
        cap_attr = np.concatenate([atlas_coords(TILE_CAP, *np.meshgrid(cap_u, t)), np.zeros((len(t), cols, 1))], -1)
        seam = add_vertices(neutral[oval[:1]], cap_attr[0, -1:], oval[:1])  # before the ring so edges keep their order
        ring0 = duplicates(oval, cap_attr[0, :-1])
        oval_r = np.linalg.norm(neutral[oval] - HEAD_CENTRE, axis=-1)
        oval_r = np.concatenate([oval_r, oval_r[:1]])
        skull = skull_radius(dirs)
        # Start at the oval and settle onto the skull within the first third of the way back.
        radius = skull + (oval_r - skull[0]) * (1.0 - _smoothstep(0.0, 0.3, t))[:, None]
        # Hair volume pushes the cap out, but never forwards: it must not grow over the face.
        push = dirs * np.array([1.0, 1.0, 0.0]) + np.minimum(dirs * np.array([0.0, 0.0, 1.0]), 0.0)
        cap_rest = HEAD_CENTRE + radius[..., None] * dirs + style.hair_thickness[..., None] * push
        rest_idx = add_vertices(cap_rest[1:].reshape(-1, 3), cap_attr[1:].reshape(-1, 3))
        # The seam's welded normal comes from the ring's vertex for oval[0].
        cap_idx = np.concatenate([np.concatenate([ring0, seam])[None], rest_idx.reshape(CAP_RINGS, cols)])
        for k in range(CAP_RINGS):  # the seam column shades with column 0
            weld[-1][k * cols + cols - 1] = rest_idx[k * cols]
        self.cap_rest = cap_rest
        self.cap_fade = (1.0 - _smoothstep(0.0, 0.45, t))[1:] ** 2  # how much of the oval's motion each ring follows
        self.cap_rows = rest_idx.reshape(CAP_RINGS, cols)
        cap_tris = []
        for j in range(CAP_RINGS):
            a, b, c, d = cap_idx[j, :-1], cap_idx[j, 1:], cap_idx[j + 1, :-1], cap_idx[j + 1, 1:]
            cap_tris += [np.stack([a, b, d], -1), np.stack([a, d, c], -1)]
        cap_tris = np.concatenate(cap_tris)
        all_rest = np.concatenate(blocks)
        cap_tris = _orient_outward(cap_tris, all_rest, HEAD_CENTRE)
        add_faces(cap_tris, MAT_TEXTURED, True)

        # -- eyes -------------------------------------------------------------------------------
        self.eye_blocks = []
        for rim, material in ((loops.eye_left, MAT_EYE_LEFT), (loops.eye_right, MAT_EYE_RIGHT)):
            rim_idx = duplicates(rim, np.tile([0.0, 0.0, 1.0], (len(rim), 1)))
            centre = add_vertices(neutral[rim].mean(0, keepdims=True), np.zeros((1, 3)))
            tris = np.stack([rim_idx, np.roll(rim_idx, -1), np.full(len(rim), centre[0])], -1)
            add_faces(tris, material, False)
            self.eye_blocks.append((rim, rim_idx, int(centre[0])))

        # -- mouth ------------------------------------------------------------------------------
        upper, lower = loops.lips_upper, loops.lips_lower
        corner_x = np.abs(neutral[upper[[0, -1]], 0]).mean()
        across_u = neutral[upper, 0] / corner_x  # -1 .. 1 from corner to corner
        across_l = neutral[lower, 0] / corner_x
        contour = np.concatenate([upper, lower[1:-1]])
        # attributes: (across, 0 at the lips .. 1 at the teeth edge / back, 1 on the lower half)
        contour_attr = np.stack([np.concatenate([across_u, across_l[1:-1]]), np.zeros(len(contour)),
                                 np.concatenate([np.zeros(len(upper)), np.ones(len(lower) - 2)])], -1)
        contour_idx = duplicates(contour, contour_attr)
        up_lip = contour_idx[: len(upper)]
        low_lip = np.concatenate([up_lip[:1], contour_idx[len(upper):], up_lip[-1:]])
        teeth_up = add_vertices(neutral[upper[1:-1]], np.stack([across_u[1:-1], np.ones(len(upper) - 2), np.zeros(len(upper) - 2)], -1))
        teeth_low = add_vertices(neutral[lower[1:-1]], np.stack([across_l[1:-1], np.ones(len(lower) - 2), np.ones(len(lower) - 2)], -1))
        mouth_centre = add_vertices(neutral[contour].mean(0, keepdims=True), np.array([[0.0, 1.0, 0.5]]))
        tu = np.concatenate([up_lip[:1], teeth_up, up_lip[-1:]])
        tl = np.concatenate([low_lip[:1], teeth_low, low_lip[-1:]])
        for lip, teeth in ((up_lip, tu), (low_lip, tl)):
            a, b, c, d = lip[:-1], lip[1:], teeth[:-1], teeth[1:]
            add_faces(np.concatenate([np.stack([a, b, d], -1), np.stack([a, d, c], -1)]), MAT_TEETH, False)
        # The interior is a fan over the teeth edges; its "back" attribute is 0 at the teeth edge
        # and 1 at the centre, so the mouth darkens with depth. Interior copies of the teeth edge.
        inner_up = add_vertices(neutral[upper[1:-1]], np.stack([across_u[1:-1], np.zeros(len(upper) - 2), np.zeros(len(upper) - 2)], -1))
        inner_low = add_vertices(neutral[lower[1:-1]], np.stack([across_l[1:-1], np.zeros(len(lower) - 2), np.ones(len(lower) - 2)], -1))
        ring = np.concatenate([up_lip[:1], inner_up, up_lip[-1:], inner_low[::-1]])
        add_faces(np.stack([ring, np.roll(ring, -1), np.full(len(ring), mouth_centre[0])], -1), MAT_MOUTH, False)
        self.mouth = (upper, lower, teeth_up, teeth_low, inner_up, inner_low, int(mouth_centre[0]))

        # -- neck -------------------------------------------------------------------------------
        angle = np.linspace(-np.pi, np.pi, NECK_SEGMENTS + 1)
        ys = np.linspace(NECK_TOP, NECK_BOTTOM, NECK_RINGS)
        a_grid, y_grid = np.meshgrid(angle, ys)
        r = style.neck_radius
        neck = np.stack([r * np.sin(a_grid), y_grid, NECK_CENTRE_Z + r * np.cos(a_grid)], -1)
        neck_attr = np.concatenate([atlas_coords(TILE_NECK, 0.5 * (a_grid + np.pi) / (2 * np.pi),
                                                 (y_grid - NECK_TOP) / (NECK_BOTTOM - NECK_TOP)),
                                    np.zeros(a_grid.shape + (1,))], -1)
        neck_idx = add_vertices(neck.reshape(-1, 3), neck_attr.reshape(-1, 3))
        neck_tris = _grid_triangles(NECK_RINGS, NECK_SEGMENTS + 1, int(neck_idx[0]))
        centre_line = np.stack([np.zeros(len(neck_tris)), np.concatenate(blocks)[neck_tris].mean(1)[:, 1],
                                np.full(len(neck_tris), NECK_CENTRE_Z)], -1)
        add_faces(_orient_outward(neck_tris, np.concatenate(blocks), centre_line), MAT_TEXTURED, True)
        self.neck_idx = neck_idx
        self.neck_weight = np.repeat(_smoothstep(NECK_BOTTOM + 0.55, NECK_TOP - 0.05, ys), NECK_SEGMENTS + 1)

        # -- hair curtain (long hair) -----------------------------------------------------------
        self.curtain_idx = np.zeros(0, np.int64)
        if style.long_hair > 0:
            # It starts inside the cap (narrow at the top) and flares out below the ears; its front
            # edges stay behind the face's sides.
            top, bottom = 0.4, -0.557 - style.long_hair
            ys = np.linspace(top, bottom, CURTAIN_ROWS)
            alpha = np.linspace(-1.0, 1.0, CURTAIN_COLUMNS) * np.deg2rad(95.0)
            a_grid, y_grid = np.meshgrid(alpha, ys)
            rad = style.hair_width * (0.8 + 0.2 * _smoothstep(top, 0.0, y_grid) + 0.2 * _smoothstep(-0.3, bottom, y_grid))
            curtain = np.stack([rad * np.sin(a_grid), y_grid, HEAD_CENTRE[2] - 0.05 - rad * np.cos(a_grid)], -1)
            c_attr = np.concatenate([atlas_coords(TILE_NECK, 0.5 + 0.5 * (a_grid / a_grid.max() * 0.5 + 0.5),
                                                  (y_grid - top) / (bottom - top)), np.zeros(a_grid.shape + (1,))], -1)
            self.curtain_idx = add_vertices(curtain.reshape(-1, 3), c_attr.reshape(-1, 3))
            add_faces(_grid_triangles(CURTAIN_ROWS, CURTAIN_COLUMNS, int(self.curtain_idx[0])), MAT_TEXTURED, True)
            self.curtain_weight = np.repeat(_smoothstep(bottom + 0.3, top - 0.3, ys), CURTAIN_COLUMNS)

        # -- ears ----------------------------------------------------------------------------
        if style.ears and not len(self.curtain_idx):
            for side in (1.0, -1.0):
                add_faces(_ear(add_vertices, side), MAT_TEXTURED, True)

        # -- torso ------------------------------------------------------------------------------
        s = np.linspace(-1.0, 1.0, TORSO_COLUMNS)
        rows = np.linspace(0.0, 1.0, TORSO_ROWS) ** 1.6
        s_grid, r_grid = np.meshgrid(s, rows)
        width = style.shoulder_width
        # The shoulders slope down from the neck and round off into the arms.
        y_top = TORSO_PIVOT[1] + 0.02 - 0.32 * s_grid**2 - 0.12 * s_grid**4
        y = y_top - 1.9 * r_grid
        # Shallow at the neckline (the neck stands in front), deep at the chest (in front of the neck).
        depth = 0.15 + 0.45 * _smoothstep(0.0, 0.25, r_grid)
        x = s_grid * width * (1.0 - 0.08 * (1.0 - r_grid) ** 4)
        z = TORSO_PIVOT[2] - 0.05 + depth * np.sqrt(np.clip(1.0 - 0.85 * s_grid**2, 0.0, None))
        torso = np.stack([x, y, z], -1)
        t_attr = np.concatenate([atlas_coords(TILE_TORSO, 0.5 + 0.5 * s_grid, r_grid), np.zeros(s_grid.shape + (1,))], -1)
        self.torso_idx = add_vertices(torso.reshape(-1, 3), t_attr.reshape(-1, 3))
        torso_tris = _grid_triangles(TORSO_ROWS, TORSO_COLUMNS, int(self.torso_idx[0]))
        inside = np.tile([0.0, 0.0, TORSO_PIVOT[2] - 0.5], (len(torso_tris), 1))
        add_faces(_orient_outward(torso_tris, np.concatenate(blocks), inside), MAT_TEXTURED, True)

        self.rest = np.concatenate(blocks)
        self.attributes = np.concatenate(attrs).astype(np.float32)
        weld_all = np.concatenate(weld)
        self.weld = weld_all
        dup = np.nonzero(weld_all < len(neutral))[0]
        self._duplicates = dup[dup >= len(neutral)]
        self.faces = np.concatenate(faces).astype(np.int64)
        self.material = np.concatenate(materials).astype(np.int64)
        shaded = np.concatenate(shaded_faces)
        self.shaded_faces = weld_all[shaded]  # normals are computed on the welded mesh
        self.num_vertices = count

    # ---------------------------------------------------------------------------------------------
    def vertices(self, face: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Posed scene vertices (B,V,3) in normalised image coordinates.

        ``face``: model-space face vertices (B,468,3) (identity and expression applied); ``pose``
        (B,6) the head poses.
        """
        B = face.shape[0]
        out = np.empty((B, self.num_vertices, 3))
        model_space = np.broadcast_to(self.rest, (B,) + self.rest.shape).copy()
        model_space[:, : face.shape[1]] = face
        # Duplicates copy their originals exactly (welded index = original for duplicates).
        model_space[:, self._duplicates] = face[:, self.weld[self._duplicates]]
        # The cap follows the oval's motion, fading towards the back.
        oval = self.loops.oval
        motion = face[:, oval] - self.neutral[oval]
        motion = np.concatenate([motion, motion[:, :1]], 1)  # seam column
        model_space[:, self.cap_rows.ravel()] = (self.cap_rest[1:][None]
                                                 + self.cap_fade[None, :, None, None] * motion[:, None]).reshape(B, -1, 3)
        # Eyeball fans: centre behind the rim.
        for rim, _, centre in self.eye_blocks:
            ring = face[:, rim]
            width = np.ptp(ring[..., 0], axis=1)
            model_space[:, centre] = ring.mean(1)
            model_space[:, centre, 2] -= EYE_DEPTH * width
        # Mouth: teeth hang from each lip as far as the lips are apart (up to a tooth's height).
        upper, lower, teeth_up, teeth_low, inner_up, inner_low, centre = self.mouth
        gap = np.clip(face[:, upper[1:-1], 1] - face[:, lower[1:-1], 1], 0.0, None)
        across = np.abs(self.neutral[upper[1:-1], 0]) / np.abs(self.neutral[upper[[0, -1]], 0]).mean()
        profile = np.clip(1.0 - across**3, 0.0, 1.0)
        h_up = np.minimum(0.05 * profile, 0.55 * gap)
        h_low = np.minimum(0.035 * profile, 0.25 * gap)
        back = np.array([0.0, 0.0, -TEETH_BACK])
        model_space[:, teeth_up] = face[:, upper[1:-1]] + back
        model_space[:, teeth_up, 1] -= h_up
        model_space[:, teeth_low] = face[:, lower[1:-1]] + back
        model_space[:, teeth_low, 1] += h_low
        model_space[:, inner_up] = model_space[:, teeth_up]
        model_space[:, inner_low] = model_space[:, teeth_low]
        contour = np.concatenate([upper, lower[1:-1]])
        model_space[:, centre] = face[:, contour].mean(1) + np.array([0.0, 0.0, -MOUTH_DEPTH])

        head = apply_pose(model_space, pose)
        out[:] = head
        torso_pose = self.torso_pose(pose)
        body = apply_pose(model_space, torso_pose)  # only the neck/curtain/torso rows are used
        out[:, self.torso_idx] = body[:, self.torso_idx]
        w = self.neck_weight[None, :, None]
        out[:, self.neck_idx] = w * head[:, self.neck_idx] + (1.0 - w) * body[:, self.neck_idx]
        if len(self.curtain_idx):
            w = self.curtain_weight[None, :, None]
            out[:, self.curtain_idx] = w * head[:, self.curtain_idx] + (1.0 - w) * body[:, self.curtain_idx]
        return out

    @staticmethod
    def torso_pose(pose: np.ndarray) -> np.ndarray:
        """The torso's pose: a damped copy of the head's rotation, about the base of the neck.

        The base of the neck lands halfway between where the head's pose puts it and where it
        would be without rotation, so the body shifts a little with the head, like a person.
        """
        pose = np.asarray(pose, np.float64)
        out = pose.copy()
        out[..., :3] = pose[..., :3] * TORSO_FOLLOW
        no_turn = pose.copy()
        no_turn[..., :3] = 0.0
        pivot_head = apply_pose(TORSO_PIVOT[None], pose)[..., 0, :2]
        pivot_still = apply_pose(TORSO_PIVOT[None], no_turn)[..., 0, :2]
        pivot_body = apply_pose(TORSO_PIVOT[None], out)[..., 0, :2]
        out[..., 3:5] += 0.5 * (pivot_head + pivot_still) - pivot_body
        return out


EAR_SEGMENTS = 14
EAR_RINGS = np.array([1.0, 0.78, 0.45, 0.0])  # rim, helix ridge, concha, centre


def _ear(add_vertices, side: float) -> np.ndarray:
    """An ear on the subject's ``side`` (+1 left): a polar grid in a plane flared 22 degrees out from
    the side of the head, its front edge sunk into the skull; adds its vertices, returns its triangles."""
    flare = np.deg2rad(22.0)
    back = np.array([side * np.sin(flare), 0.0, -np.cos(flare)])  # along the ear, front to back
    up = np.array([0.0, 1.0, 0.0])
    out = np.cross(up, back) * side  # away from the head
    out = out * np.sign(out[0] * side)
    front_edge = np.array([side * 0.55, HEAD_CENTRE[1] + 0.02, HEAD_CENTRE[2] + 0.06])
    half_w, half_h = 0.11, 0.2
    angle = np.linspace(0.0, 2.0 * np.pi, EAR_SEGMENTS, endpoint=False)
    ring, theta = np.meshgrid(EAR_RINGS, angle, indexing="ij")
    a = ring * np.cos(theta)  # -1 front .. 1 back
    b = ring * np.sin(theta)
    bulge = np.interp(ring, [0.0, 0.45, 0.78, 1.0], [-0.03, -0.015, 0.02, 0.0])  # cupped, with a ridge
    points = (front_edge + (1.0 + a)[..., None] * half_w * back + (b * half_h)[..., None] * up
              + bulge[..., None] * out)
    # Ears sample the right half of the neck tile (the curtain's place, free when there is none).
    uv = atlas_coords(TILE_NECK, 0.75 + 0.22 * a, 0.5 + 0.45 * b)
    attrs = np.concatenate([uv, np.zeros(uv.shape[:-1] + (1,))], -1)
    idx = add_vertices(points.reshape(-1, 3), attrs.reshape(-1, 3)).reshape(len(EAR_RINGS), EAR_SEGMENTS)
    wrap = np.concatenate([idx, idx[:, :1]], 1)
    tris = []
    for r in range(len(EAR_RINGS) - 1):
        p, q, s_, t_ = wrap[r, :-1], wrap[r, 1:], wrap[r + 1, :-1], wrap[r + 1, 1:]
        tris += [np.stack([p, q, t_], -1), np.stack([p, t_, s_], -1)]
    return np.concatenate(tris)
