"""Seeded identities: face shape, skin, eyes, brows, hair, clothes, background and light.

:func:`sample_identity` draws every appearance parameter of identity ``index`` from a random
generator seeded by ``(seed, index)`` alone. :func:`bake_atlas` turns them into the texture
atlas the scene samples (four tiles, see :mod:`.geometry`) at any resolution: every pattern is
a function of continuous coordinates (3D position on the mean face, direction from the head's
centre, or a tile's own (u, v)), so the same identity looks the same at 64 and at 512 pixels.

Atlas channels: 0-2 albedo (RGB, linear 0..1); 3-5 forehead lines under the inner brows, the
left and the right outer brow (darkening per unit of ``browInnerUp``, ``browOuterUpLeft``,
``browOuterUpRight``); 6-7 the left and right nasolabial folds (darkening per unit of
``mouthSmileLeft``/``Right``; negative on the cheek above, which a smile lifts into the light).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from mimaface.face3d.model import FaceModel
from mimaface.face3d.render import interpolate, rasterize
from mimaface.synthtalk.geometry import (
    ATLAS_MARGIN,
    CAP_RINGS,
    FaceLoops,
    HeadStyle,
    cap_directions,
    face_uv,
)

NUM_CHANNELS = 8
CH_FOREHEAD = 3  # 3, 4, 5: inner, left outer, right outer
CH_FOLD = 6  # 6, 7: left, right

SKIN_TONES = np.array([  # light to dark, sRGB in 0..1
    [0.98, 0.86, 0.78], [0.93, 0.76, 0.65], [0.86, 0.66, 0.52], [0.76, 0.57, 0.42],
    [0.64, 0.45, 0.31], [0.50, 0.34, 0.23], [0.38, 0.25, 0.17], [0.27, 0.18, 0.12],
])
HAIR_COLOURS = {  # name: (rgb, weight)
    "black": ((0.05, 0.045, 0.045), 0.24), "dark brown": ((0.16, 0.10, 0.06), 0.22),
    "brown": ((0.32, 0.20, 0.11), 0.16), "light brown": ((0.50, 0.36, 0.21), 0.09),
    "blonde": ((0.80, 0.65, 0.42), 0.09), "platinum": ((0.90, 0.85, 0.72), 0.03),
    "auburn": ((0.50, 0.20, 0.09), 0.05), "ginger": ((0.72, 0.36, 0.14), 0.03),
    "grey": ((0.52, 0.51, 0.50), 0.05), "white": ((0.86, 0.85, 0.83), 0.02),
    "dyed": (None, 0.02),
}
IRIS_COLOURS = {
    "dark brown": ((0.22, 0.12, 0.06), 0.35), "brown": ((0.40, 0.24, 0.11), 0.2),
    "hazel": ((0.48, 0.40, 0.18), 0.1), "amber": ((0.62, 0.42, 0.12), 0.04),
    "green": ((0.30, 0.46, 0.26), 0.08), "blue": ((0.30, 0.47, 0.72), 0.15), "grey": ((0.48, 0.54, 0.60), 0.08),
}


@dataclass
class Identity:
    """Everything that makes one synthetic person look like themselves."""

    index: int
    shape: np.ndarray  # (M,) identity coefficients of the face model
    skin: np.ndarray  # (3,) base albedo
    blush: float
    freckles: int  # how many
    moles: np.ndarray  # (n,3): x, y, radius on the mean face
    lips: np.ndarray  # (3,)
    brow_colour: np.ndarray
    brow_thickness: float
    brow_lift: float  # vertical offset of the brows
    iris: np.ndarray  # (3,)
    iris_outer: np.ndarray  # (3,) colour at the iris rim
    hair_colour: np.ndarray
    hair_name: str
    hairline: np.ndarray  # elevation (deg) of the hairline at the front, the sides and the back
    hair_parting: float  # asymmetry of the hairline (deg)
    fringe: float  # height on the forehead (mean-face y) below which no hair falls; > 0.61: none
    hair_volume: float  # thickness of the hair over the skull
    long_hair: float  # 0: none; else length below the chin
    bald: bool
    beard: str  # "none", "stubble", "moustache", "goatee", "full"
    beard_strength: float
    forehead_lines: float
    fold_depth: float
    neck_radius: float
    shoulder_width: float
    clothes: np.ndarray  # (2,3) main and second colour
    clothes_pattern: str  # "solid", "stripes", "checks", "dots"
    neckline: str  # "round", "v", "collar"
    background: np.ndarray  # (3,3) colours
    background_pattern: str  # "plain", "gradient", "blobs", "stripes", "panels"
    light_dir: np.ndarray  # (3,) unit, towards the light, in image space
    ambient: float
    light_tint: np.ndarray  # (3,)
    seed: int  # seeds the pattern noise
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A short JSON-able description (written next to each clip)."""
        return {"skin": [round(float(c), 3) for c in self.skin], "hair": self.hair_name, "bald": self.bald,
                "long_hair": round(self.long_hair, 3), "beard": self.beard, "clothes": self.clothes_pattern,
                "background": self.background_pattern}


def _choice(rng: np.random.Generator, table: dict) -> tuple[str, object]:
    names = list(table)
    weights = np.array([table[n][1] for n in names], np.float64)
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return name, table[name][0]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def sample_identity(seed: int, index: int, num_shape: int = 12) -> Identity:
    """Identity ``index`` of data set ``seed`` (deterministic; nothing else feeds it)."""
    rng = np.random.default_rng([int(seed), int(index), 0x1D])
    shape = np.clip(rng.standard_normal(num_shape), -2.5, 2.5)
    tone = rng.uniform(0.0, 1.0) ** 0.9 * (len(SKIN_TONES) - 1)
    lo = int(np.floor(tone))
    skin = SKIN_TONES[lo] + (SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[lo]) * (tone - lo)
    skin = np.clip(skin * rng.uniform(0.95, 1.04) + rng.normal(0, 0.02, 3) * np.array([1.0, 0.7, 0.7]), 0.05, 1.0)
    masculine = rng.random() < 0.5
    light_skin = tone < 3.0
    hair_name, hair = _choice(rng, HAIR_COLOURS)
    if hair is None:
        hair = _hsv(rng.random(), rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.8))
    if not light_skin and hair_name in ("blonde", "platinum", "ginger") and rng.random() < 0.7:
        hair_name, hair = "black", HAIR_COLOURS["black"][0]
    hair = np.clip(np.asarray(hair) * rng.uniform(0.85, 1.15), 0.0, 1.0)
    iris_name, iris = _choice(rng, IRIS_COLOURS)
    if not light_skin:
        iris = IRIS_COLOURS["dark brown"][0]
    iris = np.clip(np.asarray(iris) * rng.uniform(0.85, 1.15), 0.0, 1.0)
    long_hair = 0.0
    if rng.random() < (0.2 if masculine else 0.65):
        long_hair = rng.uniform(0.25, 1.1)
    bald = masculine and long_hair == 0.0 and rng.random() < 0.12
    hairline = np.array([rng.uniform(20.0, 40.0), rng.uniform(2.0, 22.0), rng.uniform(-35.0, -10.0)])
    if long_hair > 0:
        hairline[1:] = [rng.uniform(-65.0, -40.0), -80.0]
    if bald:
        hairline[0] = rng.uniform(60.0, 90.0)
    beard = "none"
    if masculine and rng.random() < 0.45:
        beard = str(rng.choice(["stubble", "moustache", "goatee", "full"], p=[0.4, 0.15, 0.15, 0.3]))
    brow = np.clip(hair * rng.uniform(0.5, 0.9) if hair_name not in ("dyed",) else skin * 0.3, 0.02, 1.0)
    if hair_name in ("grey", "white", "platinum", "blonde"):
        brow = np.clip(brow * 0.6, 0, 1)
    lips = np.clip(skin * np.array([0.8, 0.5, 0.52]) + np.array([0.1, 0.02, 0.04]), 0.0, 1.0)
    if not masculine and rng.random() < 0.3:
        lips = _hsv(rng.uniform(0.93, 1.02) % 1.0, rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.8))
    moles = np.stack([rng.uniform(-0.4, 0.4, 4), rng.uniform(-0.45, 0.5, 4), rng.uniform(0.006, 0.012, 4)], -1)
    moles = moles[: rng.integers(0, 5)]
    hue = rng.random()
    clothes = np.stack([_hsv(hue, rng.uniform(0.0, 0.8), rng.uniform(0.15, 0.9)),
                        _hsv((hue + rng.uniform(0.2, 0.8)) % 1.0, rng.uniform(0.0, 0.7), rng.uniform(0.2, 0.95))])
    bg_hue = rng.random()
    background = np.stack([_hsv((bg_hue + rng.uniform(-0.1, 0.1)) % 1.0, rng.uniform(0.0, 0.6), rng.uniform(0.2, 0.95))
                           for _ in range(3)])
    az, el = np.deg2rad(rng.uniform(-55, 55)), np.deg2rad(rng.uniform(-5, 45))
    light = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    return Identity(
        index=int(index), shape=shape, skin=skin, blush=rng.uniform(0.0, 0.5), freckles=int(rng.choice([0, 0, 0, 40, 150])) if light_skin else 0,
        moles=moles, lips=lips, brow_colour=brow, brow_thickness=rng.uniform(0.7, 1.4) * (1.15 if masculine else 0.9),
        brow_lift=rng.uniform(-0.012, 0.012), iris=iris, iris_outer=np.clip(iris * rng.uniform(0.35, 0.7), 0, 1),
        hair_colour=hair, hair_name=hair_name, hairline=hairline, hair_parting=rng.uniform(-8.0, 8.0),
        fringe=1.0 if bald or rng.random() < 0.7 else rng.uniform(0.46, 0.6),
        hair_volume=0.0 if bald else rng.uniform(0.02, 0.12) * (1.5 if long_hair else 1.0), long_hair=long_hair,
        bald=bald, beard=beard, beard_strength=rng.uniform(0.5, 1.0), forehead_lines=rng.uniform(0.25, 0.6),
        fold_depth=rng.uniform(0.25, 0.55), neck_radius=rng.uniform(0.31, 0.36) * (1.07 if masculine else 1.0),
        shoulder_width=rng.uniform(1.2, 1.6) * (1.06 if masculine else 1.0),
        clothes=clothes, clothes_pattern=str(rng.choice(["solid", "stripes", "checks", "dots"], p=[0.5, 0.22, 0.16, 0.12])),
        neckline=str(rng.choice(["round", "v", "collar"])), background=background,
        background_pattern=str(rng.choice(["plain", "gradient", "blobs", "stripes", "panels"], p=[0.1, 0.3, 0.25, 0.15, 0.2])),
        light_dir=light, ambient=rng.uniform(0.3, 0.5), light_tint=np.array([1.0, 1.0, 1.0]) + rng.normal(0, 0.04, 3),
        seed=int(rng.integers(0, 2**31 - 1)), extra={"masculine": bool(masculine), "iris": iris_name},
    )


# -------------------------------------------------------------------------------------------------
# Continuous noise: sums of random sinusoids, so a pattern does not depend on the texture's size.

class Waves:
    """A smooth random field ``f(x, y)`` with zero mean and unit variance: random sinusoids."""

    def __init__(self, rng: np.random.Generator, count: int, freq: tuple[float, float] | float,
                 anisotropy: tuple[float, float] = (1.0, 1.0), periodic_x: bool = False):
        lo, hi = (freq, freq) if np.isscalar(freq) else freq
        mag = np.exp(rng.uniform(np.log(lo), np.log(hi), count))
        angle = rng.uniform(0, 2 * np.pi, count)
        self.kx = mag * np.cos(angle) * anisotropy[0]
        self.ky = mag * np.sin(angle) * anisotropy[1]
        if periodic_x:  # whole cycles over x in [0, 1]
            self.kx = np.round(self.kx / (2 * np.pi)) * 2 * np.pi
        self.phase = rng.uniform(0, 2 * np.pi, count)
        self.amp = np.sqrt(2.0 / count)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y).shape, np.float32)
        for kx, ky, ph in zip(self.kx, self.ky, self.phase):
            out += np.cos(kx * x + ky * y + ph).astype(np.float32)
        return out * np.float32(self.amp)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float32) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _polyline_distance(x: np.ndarray, y: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from (x, y) to a 2D polyline, and the position along it (0..1) of the nearest point."""
    best = np.full(x.shape, np.inf, np.float32)
    where = np.zeros(x.shape, np.float32)
    lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
    start = np.concatenate([[0.0], np.cumsum(lengths)]) / max(lengths.sum(), 1e-9)
    for k in range(len(points) - 1):
        a, b = points[k], points[k + 1]
        ab = b - a
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / max(ab @ ab, 1e-12), 0.0, 1.0)
        d = np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1]).astype(np.float32)
        closer = d < best
        best = np.where(closer, d, best)
        where = np.where(closer, start[k] + t * (start[k + 1] - start[k]), where)
    return best, where


def _spots(x: np.ndarray, y: np.ndarray, centres: np.ndarray, radius: np.ndarray, texel: float) -> np.ndarray:
    """Sum of Gaussian spots; a spot smaller than a texel is widened with its total ink kept."""
    out = np.zeros(x.shape, np.float32)
    for (cx, cy), r in zip(centres, np.broadcast_to(radius, len(centres))):
        eff = np.hypot(r, 0.5 * texel)
        near = (np.abs(x - cx) < 4 * eff) & (np.abs(y - cy) < 4 * eff)
        if near.any():
            d2 = (x[near] - cx) ** 2 + (y[near] - cy) ** 2
            out[near] += (r / eff) ** 2 * np.exp(-0.5 * d2 / eff**2)
    return np.clip(out, 0.0, 1.0)


def hair_coverage(ident: Identity, directions: np.ndarray, softness: float = 4.0) -> np.ndarray:
    """How much hair (0..1) grows in each unit direction (...,3) from the head's centre."""
    d = np.asarray(directions, np.float64)
    elevation = np.rad2deg(np.arcsin(np.clip(d[..., 1], -1, 1)))
    azimuth = np.arctan2(d[..., 0], d[..., 2])
    front, side, back = ident.hairline
    # h(az) = a + b cos(az) + c cos(2 az) through the front, side and back values.
    a, b, c = (front + 2 * side + back) / 4, (front - back) / 2, (front - 2 * side + back) / 4
    line = a + b * np.cos(azimuth) + c * np.cos(2 * azimuth) + ident.hair_parting * np.sin(azimuth)
    cover = _smoothstep(-softness, softness, elevation - line)
    if ident.bald:  # a fringe round the back and sides only
        cover = cover * 0.0 + _smoothstep(-softness, softness, elevation - (ident.hairline[2] + 10)) * \
            _smoothstep(softness, -softness, elevation - 18.0) * _smoothstep(0.5, 1.2, np.abs(azimuth))
    return cover


def head_style(ident: Identity, model: FaceModel) -> HeadStyle:
    """The shapes around the face (hair volume over the cap, neck, shoulders) of an identity."""
    neutral = model.vertices(ident.shape)
    dirs, t = cap_directions(neutral[FaceLoops.of(model).oval])
    cover = hair_coverage(ident, dirs, softness=8.0)
    # No thickness at the face's edge (the cap starts exactly on the oval); it grows over the
    # first part of the way back, so the hair frames the face without growing over it.
    thickness = ident.hair_volume * cover * _smoothstep(0.03, 0.3, t)[:, None]
    thickness = thickness.astype(np.float64)
    assert thickness.shape == (CAP_RINGS + 1, dirs.shape[1])
    return HeadStyle(hair_thickness=thickness, long_hair=ident.long_hair, hair_width=0.6 + ident.hair_volume,
                     neck_radius=ident.neck_radius, shoulder_width=ident.shoulder_width, ears=ident.long_hair == 0)


# -------------------------------------------------------------------------------------------------
# Baking the atlas

@functools.lru_cache(maxsize=8)
def _face_texels(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean-face 3D position (T,T,3) of every face-tile texel, its triangle (-1 off the mesh; then
    the position is the nearest covered texel's) and whether it is on the lips."""
    model = FaceModel.load()
    uv = face_uv(model.mean_shape)
    local = ATLAS_MARGIN + uv * (1.0 - 2.0 * ATLAS_MARGIN)
    layout = np.stack([2.0 * local[:, 0] - 1.0, 1.0 - 2.0 * local[:, 1], np.zeros(len(uv))], -1)
    faces = torch.as_tensor(model.triangles)
    frags = rasterize(torch.as_tensor(layout, dtype=torch.float32), faces, resolution, resolution)
    pos = interpolate(torch.as_tensor(model.mean_shape, dtype=torch.float32), faces, frags)[0].numpy()
    tri = frags.face_index[0].numpy()
    covered = tri >= 0
    _, (ii, jj) = ndimage.distance_transform_edt(~covered, return_indices=True)
    pos = pos[ii, jj]
    lips_set = set(model.regions["lips"].tolist())
    lip_tris = np.array([all(int(v) in lips_set for v in t) for t in model.triangles] + [False])
    lips = lip_tris[np.where(covered, tri, -1)][ii, jj]
    return pos.astype(np.float32), np.where(covered, tri, -1), lips


def _tile_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) in the tile's usable square for every texel of a tile (may fall outside [0,1] in the margin)."""
    local = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    uv = (local - ATLAS_MARGIN) / (1.0 - 2.0 * ATLAS_MARGIN)
    u, v = np.meshgrid(uv, uv)
    return u, v


def bake_atlas(ident: Identity, model: FaceModel, resolution: int) -> torch.Tensor:
    """The identity's texture atlas (1, NUM_CHANNELS, 2T, 2T) float32 for tiles of ``resolution`` T."""
    T = int(resolution)
    atlas = np.zeros((NUM_CHANNELS, 2 * T, 2 * T), np.float32)
    rng = np.random.default_rng(ident.seed)
    atlas[:, :T, :T] = _face_tile(ident, model, T, rng)
    atlas[:, :T, T:] = _cap_tile(ident, model, T, rng)
    atlas[:, T:, :T] = _neck_tile(ident, T, rng)
    atlas[:, T:, T:] = _torso_tile(ident, T, rng)
    return torch.from_numpy(atlas)[None]


def _mix(base: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend (3,H,W) ``base`` towards ``colour`` (3,) or (3,H,W) by ``weight`` (H,W)."""
    colour = np.asarray(colour, np.float32)
    if colour.ndim == 1:
        colour = colour[:, None, None]
    return base + (colour - base) * np.clip(weight, 0.0, 1.0)[None]


def _hair_albedo(ident: Identity, strands: np.ndarray) -> np.ndarray:
    """Hair colour (3,H,W) with strand streaks in -1..1 ``strands``."""
    return np.clip(ident.hair_colour[:, None, None] * (1.0 + 0.28 * strands)[None] + 0.03 * strands[None], 0.0, 1.0)


def _face_tile(ident: Identity, model: FaceModel, T: int, rng: np.random.Generator) -> np.ndarray:
    pos, _, lips = _face_texels(T)
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    texel = 1.2 / T  # mean-face units per texel, roughly
    out = np.zeros((NUM_CHANNELS, T, T), np.float32)
    mirror_x = np.abs(x)
    low = Waves(rng, 12, (3.0, 9.0))(x, y)
    fine = Waves(rng, 16, (40.0, 90.0))(x, y)
    skin = ident.skin[:, None, None] * (1.0 + 0.035 * low + 0.015 * fine)[None]
    # Warmer cheeks and nose, a slightly lighter forehead, a shadow under the eyes.
    red = np.array([0.85, 0.35, 0.35], np.float32) * ident.skin.mean() * 1.1
    cheeks = np.exp(-0.5 * (((mirror_x - 0.3) / 0.1) ** 2 + ((y + 0.02) / 0.09) ** 2))
    nose = np.exp(-0.5 * ((x / 0.05) ** 2 + ((y + 0.02) / 0.06) ** 2)) * _smoothstep(0.12, 0.2, z)
    skin = _mix(skin, red, (0.12 + ident.blush) * 0.45 * cheeks + 0.12 * nose)
    under_eye = np.exp(-0.5 * (((mirror_x - 0.22) / 0.07) ** 2 + ((y - 0.165) / 0.025) ** 2))
    skin = skin * (1.0 - 0.1 * under_eye)[None]
    lid = np.exp(-0.5 * (((mirror_x - 0.23) / 0.075) ** 2 + ((y - 0.28) / 0.025) ** 2))
    skin = skin * (1.0 - 0.08 * lid)[None]
    # Freckles over the nose and cheeks, moles anywhere.
    if ident.freckles:
        cx = rng.normal(0.0, 0.18, ident.freckles)
        cy = rng.normal(0.05, 0.08, ident.freckles)
        dots = _spots(x, y, np.stack([cx, cy], -1), rng.uniform(0.003, 0.007, ident.freckles), texel)
        skin = _mix(skin, ident.skin * np.array([0.72, 0.55, 0.45]), 0.8 * dots)
    if len(ident.moles):
        dots = _spots(x, y, ident.moles[:, :2], ident.moles[:, 2], texel)
        skin = _mix(skin, ident.skin * np.array([0.35, 0.25, 0.2]), dots)
    # Nostrils.
    nostrils = np.exp(-0.5 * (((mirror_x - 0.05) / 0.022) ** 2 + ((y + 0.06) / 0.012) ** 2))
    skin = skin * (1.0 - 0.65 * nostrils)[None]
    # Beard.
    beard = _beard_weight(ident, x, y)
    if ident.beard != "none":
        strands = Waves(rng, 24, (120.0, 260.0))(x, y)
        stubble_colour = ident.skin * 0.55 + 0.02
        if ident.beard == "stubble":
            skin = _mix(skin, stubble_colour * np.array([0.9, 0.92, 1.0]), 0.35 * ident.beard_strength * beard * (0.8 + 0.2 * strands))
        else:
            skin = _mix(skin, _hair_albedo(ident, strands), ident.beard_strength * beard * (0.8 + 0.2 * strands))
    # Lips (the lower lip catches more light).
    lip_w = ndimage.gaussian_filter(lips.astype(np.float32), max(0.6, 0.006 / texel))
    lip_colour = ident.lips[:, None, None] * (1.0 + 0.08 * np.tanh((-0.26 - y) / 0.02))[None]
    skin = _mix(skin, lip_colour, lip_w)
    # Eyebrows and the lash line.
    skin = _paint_brows(ident, model, skin, x, y, rng, texel)
    mean = model.mean_shape
    for side in (1.0, -1.0):
        upper = mean[[33, 246, 161, 160, 159, 158, 157, 173, 133]][:, :2] * np.array([side, 1.0])
        d, along = _polyline_distance(x, y, upper)
        above = y > np.interp(x * side, upper[:, 0] * side, upper[:, 1]) - 0.002
        lash = np.exp(-0.5 * (d / max(0.006, 0.6 * texel)) ** 2) * above * (1.0 - 0.5 * along)  # thicker outside
        skin = _mix(skin, ident.brow_colour * 0.4, 0.85 * lash)
    # A fringe: hair over the top of the forehead, higher at the temples, with a ragged edge.
    strands = Waves(rng, 20, (60.0, 160.0), anisotropy=(1.0, 0.25))(x, y)
    edge = ident.fringe + 0.5 * x**2 + 0.012 * Waves(rng, 6, (25.0, 50.0))(x, 0 * y)
    cover = _smoothstep(edge - 0.004, edge + 0.004, y)
    if cover.any():
        skin = _mix(skin, _hair_albedo(ident, strands), cover)
    out[:3] = np.clip(skin, 0.0, 1.0)
    # Forehead lines: a few wavy horizontal lines above the brows.
    wave = 0.008 * Waves(rng, 4, (6.0, 14.0))(x, y)
    lines = np.zeros_like(x)
    for k in range(4):
        centre = 0.455 + 0.045 * k + rng.uniform(-0.006, 0.006)
        lines += np.exp(-0.5 * ((y - centre - wave) / max(0.005, 0.45 * texel)) ** 2) * (1.0 - 0.15 * k)
    lines *= _smoothstep(0.42, 0.30, mirror_x) * ident.forehead_lines * (1.0 - cover)
    out[CH_FOREHEAD] = lines * np.exp(-0.5 * (x / 0.16) ** 2)
    out[CH_FOREHEAD + 1] = lines * _smoothstep(0.02, 0.22, x)
    out[CH_FOREHEAD + 2] = lines * _smoothstep(0.02, 0.22, -x)
    # Nasolabial folds, from the nose wing round the mouth corner; the cheek above them lifts.
    fold_curve = np.array([[0.15, -0.02], [0.2, -0.08], [0.235, -0.15], [0.252, -0.22], [0.255, -0.3]])
    for channel, side in ((CH_FOLD, 1.0), (CH_FOLD + 1, -1.0)):
        d, along = _polyline_distance(x * side, y, fold_curve)
        fold = np.exp(-0.5 * (d / max(0.011, 0.6 * texel)) ** 2) * (1.0 - 0.5 * along)
        lift = np.exp(-0.5 * (((x * side - 0.29) / 0.07) ** 2 + ((y + 0.05) / 0.06) ** 2))
        out[channel] = ident.fold_depth * fold - 0.12 * lift
    return out


def _beard_weight(ident: Identity, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    mouth_y = -0.24
    around_lips = np.hypot(x / 0.23, (y - mouth_y) / 0.075)
    lips_free = _smoothstep(1.0, 1.25, around_lips)
    moustache = np.exp(-0.5 * (((y + 0.15) / 0.04) ** 2)) * _smoothstep(0.26, 0.18, ax) * _smoothstep(-0.2, -0.12, y)
    chin = _smoothstep(-0.28, -0.34, y) * _smoothstep(0.2, 0.12, ax)
    jaw_line = -0.1 - 0.28 * _smoothstep(0.5, 0.2, ax)  # beard top, higher towards the ears
    full = _smoothstep(jaw_line + 0.03, jaw_line - 0.03, y)
    weight = {"none": 0.0 * ax, "stubble": np.maximum(full, moustache), "moustache": moustache,
              "goatee": np.maximum(moustache, chin), "full": np.maximum(full, moustache)}[ident.beard]
    return weight * lips_free


def _paint_brows(ident: Identity, model: FaceModel, skin: np.ndarray, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator, texel: float) -> np.ndarray:
    mean = model.mean_shape
    upper = mean[[107, 66, 105, 63, 70]][:, :2]
    lower = mean[[55, 65, 52, 53, 46]][:, :2]
    centre = 0.5 * (upper + lower) + np.array([0.0, ident.brow_lift])
    strands = Waves(rng, 16, (150.0, 300.0), anisotropy=(1.0, 0.5))(x, y)
    for side in (1.0, -1.0):
        line = centre * np.array([-side, 1.0])  # the listed points are the subject's right (-x)
        d, along = _polyline_distance(x, y, line)
        half = 0.5 * ident.brow_thickness * (0.045 - 0.022 * along)  # thick inside, thin at the tail
        w = _smoothstep(half + max(0.004, 0.5 * texel), half - 0.004, d) * (0.87 + 0.13 * strands)
        skin = _mix(skin, ident.brow_colour, 0.95 * w)
    return skin


def _cap_tile(ident: Identity, model: FaceModel, T: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _tile_grid(T)
    neutral = model.vertices(ident.shape)
    dirs, t = cap_directions(neutral[FaceLoops.of(model).oval])
    # Directions at each texel, interpolated over the (column, ring) grid.
    cols = np.clip(u, 0, 1) * (dirs.shape[1] - 1)
    rows = np.interp(np.clip(v, 0, 1), t, np.arange(len(t)))
    texel_dirs = np.stack([ndimage.map_coordinates(dirs[..., c], [rows, cols], order=1, mode="nearest") for c in range(3)], -1)
    texel_dirs /= np.linalg.norm(texel_dirs, axis=-1, keepdims=True)
    out = np.zeros((NUM_CHANNELS, T, T), np.float32)
    low = Waves(rng, 10, (3.0, 8.0))(texel_dirs[..., 0] * 2, texel_dirs[..., 1] * 2)
    skin = ident.skin[:, None, None] * (1.0 + 0.035 * low)[None] * 0.97
    cover = hair_coverage(ident, texel_dirs, softness=3.0)
    strands = Waves(rng, 28, (25.0, 70.0), anisotropy=(1.0, 0.12), periodic_x=True)(u, v)
    out[:3] = np.clip(_mix(skin, _hair_albedo(ident, strands), cover), 0.0, 1.0)
    return out


def _neck_tile(ident: Identity, T: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _tile_grid(T)
    out = np.zeros((NUM_CHANNELS, T, T), np.float32)
    # The jaw's shadow: dark where the neck leaves the head, fading down to the collar.
    neck = ident.skin[:, None, None] * (1.0 - 0.5 * _smoothstep(0.55, 0.2, v))[None] * 0.95
    strands = Waves(rng, 24, (25.0, 70.0), anisotropy=(1.0, 0.1), periodic_x=False)(u, v)
    if ident.long_hair > 0:  # the right half is the hair curtain's
        right = _hair_albedo(ident, strands) * (0.8 + 0.2 * _smoothstep(0.0, 0.4, v))[None]
    else:  # or the ears': skin, a darker bowl inside the rim
        a, b = (u - 0.75) / 0.22, (v - 0.5) / 0.45
        r = np.hypot(a, b)
        right = ident.skin[:, None, None] * (1.0 - 0.3 * _smoothstep(0.75, 0.45, r) - 0.12 * _smoothstep(0.85, 1.0, r))[None]
        right = _mix(right, np.array([0.85, 0.4, 0.4]) * ident.skin.mean(), 0.15 * _smoothstep(0.3, 0.9, r))
    out[:3] = np.where(u < 0.5, neck, right)
    return out


def _torso_tile(ident: Identity, T: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _tile_grid(T)
    out = np.zeros((NUM_CHANNELS, T, T), np.float32)
    main, second = ident.clothes.astype(np.float32)
    cloth = np.broadcast_to(main[:, None, None], (3, T, T)).copy()
    pattern = ident.clothes_pattern
    if pattern == "stripes":
        w = (np.sin(v * 2 * np.pi * 9.0) > 0.3).astype(np.float32)
        cloth = _mix(cloth, second, w)
    elif pattern == "checks":
        w = ((np.sin(u * 2 * np.pi * 7) > 0) ^ (np.sin(v * 2 * np.pi * 7) > 0)).astype(np.float32)
        cloth = _mix(cloth, second, 0.6 * w)
    elif pattern == "dots":
        w = ((np.sin(u * 2 * np.pi * 12) * np.sin(v * 2 * np.pi * 10)) > 0.6).astype(np.float32)
        cloth = _mix(cloth, second, w)
    cloth = cloth * (1.0 + 0.05 * Waves(rng, 12, (20.0, 60.0))(u, v))[None]
    # The neckline: skin showing below the neck, by style.
    du = np.abs(u - 0.5)
    if ident.neckline == "v":
        skin = v < 0.28 - 1.6 * du
    elif ident.neckline == "round":
        skin = np.hypot(du / 0.16, v / 0.12) < 1.0
    else:  # shirt collar: a light band round the neck and a small opening
        skin = v < 0.1 - 1.0 * du
        collar = (np.hypot(du / 0.2, v / 0.14) < 1.0) & ~skin
        cloth = _mix(cloth, np.clip(second * 0.3 + 0.7, 0, 1), collar.astype(np.float32))
    cloth = _mix(cloth, ident.skin * 0.92, skin.astype(np.float32))
    out[:3] = np.clip(cloth, 0.0, 1.0)
    return out


def background_image(ident: Identity, size: int) -> np.ndarray:
    """The identity's backdrop (S,S,3) float32, defined on continuous coordinates."""
    rng = np.random.default_rng(ident.seed + 1)
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(c, c)
    a, b, d = ident.background.astype(np.float32)
    pattern = ident.background_pattern
    img = np.broadcast_to(a, (size, size, 3)).copy()
    if pattern in ("gradient", "blobs", "stripes", "panels"):
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + 0.7 * ((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)), 0, 1)
        img = a + (b - a) * t[..., None]
    if pattern == "blobs":  # out-of-focus lights
        for _ in range(int(rng.integers(4, 12))):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.7), rng.uniform(0.03, 0.12)
            w = _smoothstep(r, 0.7 * r, np.hypot(x - cx, y - cy))
            img = img + (d - img) * (0.6 * w)[..., None]
    elif pattern == "stripes":
        freq, angle = rng.uniform(3, 10), rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)])
        s = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
        img = img + (d - img) * (0.35 * _smoothstep(-0.2, 0.2, s))[..., None]
    elif pattern == "panels":  # a wall with a door or window frame
        x0, x1 = sorted(rng.uniform(0, 1, 2))
        y0 = rng.uniform(0.0, 0.4)
        inside = (x > x0) & (x < x1) & (y > y0)
        img = np.where(inside[..., None], img * 0.75 + d * 0.25, img)
        frame = (np.abs(x - x0) < 0.012) | (np.abs(x - x1) < 0.012) | ((np.abs(y - y0) < 0.012) & (x > x0) & (x < x1))
        img = np.where(frame[..., None], d * 0.6, img)
    img = img * (1.0 + 0.04 * Waves(rng, 10, (4.0, 20.0))(x, y))[..., None]
    vignette = 1.0 - 0.25 * np.hypot(x - 0.5, y - 0.5) ** 2
    return np.clip(img * vignette[..., None], 0.0, 1.0).astype(np.float32)
