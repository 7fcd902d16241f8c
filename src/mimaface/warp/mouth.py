"""The inside of a mouth that opens wider than the source's.

The mesh warp stretches whatever the source shows between its lips. When the target's inner lips
are further apart than the source's, :class:`MouthPainter` repaints the mouth strip (the triangles
between the inner lip contours), column by column across the mouth (``a``: -1 .. 1 corner to
corner; distances in face-model units):

* **the source's own mouth, unstretched**: what the source shows from its upper lip down to a split
  line moves with the upper lip, what it shows below the split moves with the lower lip (the jaw).
  The split is where the source's upper teeth end (the steepest fall of brightness going down
  across its mouth). So visible teeth keep their size and stay tied to the skull, and what shows
  below them (lower teeth, lip) to the jaw;
* **a dark cavity** in between, darker with depth, with a tongue in its lower part;
* **teeth as SynthTalk draws them**, when the source shows none: upper teeth hanging from the upper
  lip and lower teeth standing on the lower lip, each as tall as the lips are apart up to a
  tooth's height, with soft gaps between teeth and a shadow under the lips, darker towards the
  corners, in ivory at the face's brightness.

The repaint is blended over the warp in proportion to the extra opening (fully at ``open_full``
more than the source) and fades in over the first pixel from the lips, so a mouth no more open
than the source's keeps exactly the warped source.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mimaface.warp.mesh import MAT_MOUTH, WarpMesh
from mimaface.warp.pixels import PixelSet

# Boundaries between teeth, across the mouth (-1..1 corner to corner): wider incisors in front (SynthTalk's).
_TOOTH_EDGES = np.array([0.0, 0.19, 0.36, 0.5, 0.62, 0.73, 0.83])
_TOOTH_EDGES = np.concatenate([-_TOOTH_EDGES[:0:-1], _TOOTH_EDGES])
IVORY = np.array([0.93, 0.9, 0.8])
THROAT = np.array([0.3, 0.08, 0.07])
TONGUE = np.array([1.1, 0.8, 0.75])  # the tongue: the lip colour, redder
UPPER_TOOTH, LOWER_TOOTH = 0.07, 0.035  # visible tooth heights (model units)
_SKIN_POINTS = (50, 280, 101, 330, 205, 425, 36, 266)  # cheeks
_REFERENCE_SKIN = 0.55  # luminance of the skin the default colours are made for


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb) @ np.array([0.299, 0.587, 0.114])


def sample(image: np.ndarray, xy: np.ndarray, radius: int = 2) -> np.ndarray:
    """Colours (N,3) of ``image`` (S,S,3) around points ``xy`` (N,2) (normalised), a median over
    each point's (2 radius + 1)^2 neighbourhood."""
    size = image.shape[0]
    col = np.clip(np.round((xy[:, 0] + 1.0) * size / 2.0 - 0.5).astype(int), 0, size - 1)
    row = np.clip(np.round((1.0 - xy[:, 1]) * size / 2.0 - 0.5).astype(int), 0, size - 1)
    patches = (image[max(0, r - radius):r + radius + 1, max(0, c - radius):c + radius + 1] for c, r in zip(col, row))
    return np.stack([np.median(patch.reshape(-1, 3), 0) for patch in patches])


class MouthPainter:
    """Per source: its mouth's colours, opening and split; per frame: paints the opened mouth."""

    def __init__(self, mesh: WarpMesh, image: np.ndarray, picture: torch.Tensor, source: PixelSet, *,
                 open_full: float = 0.04) -> None:
        """``image`` (S,S,3) float in [0, 1] and the same as ``picture`` (1,3,S,S) on the device;
        ``source``: the source's mouth-strip pixels (one frame)."""
        self.mesh = mesh
        self.open_full = float(open_full)
        self.size = image.shape[0]
        self.picture = picture
        device = picture.device
        op = mesh.openings
        mean = mesh.model.mean_shape
        self._upper, self._lower = op.lips_upper, op.lips_lower  # (11,) each, shared corners
        shape = mesh.source_shape
        self._source_gap = np.clip(shape[self._upper, 1] - shape[self._lower, 1], 0.0, None)  # (11,)
        self.source_opening = float(self._source_gap[1:-1].mean())
        corner_x = np.abs(mean[self._upper[[0, -1]], 0]).mean()
        self._across_upper = mean[self._upper, 0] / corner_x  # increasing, -1 .. 1
        self._across_lower = mean[self._lower, 0] / corner_x
        strip_upper, strip_lower = mesh.mouth_upper, mesh.mouth_lower  # the strip's copies of the contours
        static = np.zeros((mesh.num_vertices, 3))
        static[strip_upper, 0] = self._across_upper
        static[strip_lower, 0] = self._across_lower
        static[strip_lower, 1] = 1.0  # v: 0 on the upper lip, 1 on the lower
        static[strip_upper[[0, -1]], 1] = 0.5
        static[strip_upper, 2] = self._source_gap
        static[strip_lower, 2] = self._source_gap
        self._static = torch.as_tensor(static, dtype=torch.float32, device=device)
        self._contours = [torch.as_tensor(mesh.source[c, :2], dtype=torch.float32, device=device)
                          for c in (self._upper, self._lower)]

        landmarks = mesh.source[:478]
        skin = np.median(sample(image, landmarks[list(_SKIN_POINTS), :2]), 0)
        # Points halfway between each lip's outer and inner contour (both by x, so paired), away from
        # the corners, are on the lips.
        on_lips = []
        for outer, inner in (("lips_outer_upper", self._upper), ("lips_outer_lower", self._lower)):
            outer = mesh.model.regions[outer]
            outer = outer[np.argsort(mean[outer, 0], kind="stable")]
            on_lips.append(0.5 * (landmarks[outer, :2] + landmarks[inner, :2])[2:-2])
        lip = np.median(sample(image, np.concatenate(on_lips)), 0)
        brightness = float(np.clip(_luminance(skin) / _REFERENCE_SKIN, 0.4, 1.4))
        inside = image.reshape(-1, 3)[source.flat.cpu().numpy()]
        self.shows_teeth = False
        if len(inside):
            # Teeth: about as bright as the skin and much greyer (their colour spread, relative to
            # their brightness, well below the skin's).
            def chroma(rgb: np.ndarray) -> np.ndarray:
                return (rgb.max(-1) - rgb.min(-1)) / np.maximum(rgb.max(-1), 1e-6)

            white = (_luminance(inside) > 0.8 * _luminance(skin)) & (chroma(inside) < 0.6 * chroma(skin))
            self.shows_teeth = bool(white.sum() >= max(10, len(inside) // 10))
        self.split = self._teeth_edge(image) if self.shows_teeth else 0.5
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)
        self.teeth = as_tensor(np.clip(0.9 * IVORY * brightness, 0.0, 1.0))
        self.cavity = as_tensor(np.clip(THROAT * brightness * 0.6 + 0.08 * lip, 0.0, 1.0))
        self.tongue = as_tensor(np.clip(0.55 * lip * TONGUE, 0.0, 1.0))

    def _teeth_edge(self, image: np.ndarray) -> float:
        """The v (0 upper lip .. 1 lower lip) where the source's upper teeth end: the steepest fall of
        brightness going down across the middle of its mouth, below its upper fifth."""
        v = np.linspace(0.05, 0.95, 19)
        a = np.linspace(-0.5, 0.5, 9)
        upper = np.stack([np.interp(a, self._across_upper, self.mesh.source[self._upper, d]) for d in (0, 1)], -1)
        lower = np.stack([np.interp(a, self._across_lower, self.mesh.source[self._lower, d]) for d in (0, 1)], -1)
        points = (1.0 - v)[:, None, None] * upper[None] + v[:, None, None] * lower[None]  # (19,9,2)
        lum = _luminance(sample(image, points.reshape(-1, 2), radius=1)).reshape(len(v), len(a)).mean(1)
        fall = np.diff(lum)
        fall[v[1:] < 0.2] = np.inf
        k = int(np.argmin(fall))
        return float(0.5 * (v[k] + v[k + 1]))

    def openness(self, shape: np.ndarray) -> np.ndarray:
        """Blend weight (B,) of the painted interior for target model-space shapes (B,468,3)."""
        opening = (shape[:, self._upper[1:-1], 1] - shape[:, self._lower[1:-1], 1]).mean(1)
        return np.clip((opening - self.source_opening) / self.open_full, 0.0, 1.0)

    def paint(self, pixels: PixelSet, colours: torch.Tensor, shape: np.ndarray, pose: np.ndarray,
              faces: torch.Tensor, weight: np.ndarray) -> None:
        """Paint the opened mouths in ``colours`` (P,3) in place: ``pixels`` (the target's mouth-strip
        pixels, maybe among others), ``shape`` (B,468,3) target model-space shapes, ``pose`` (B,6),
        ``faces`` the warp mesh's, ``weight`` (B,) from :meth:`openness`."""
        device = colours.device
        on = torch.as_tensor(self.mesh.material, device=device)[pixels.tri] == MAT_MOUTH
        on &= torch.as_tensor(weight > 0, device=device)[pixels.batch]
        index = torch.nonzero(on).squeeze(1)
        if len(index) == 0:
            return
        sub = pixels.subset(index)
        # Per frame and lip column: how far apart the lips are, and the visible tooth heights.
        gap = np.clip(shape[:, self._upper, 1] - shape[:, self._lower, 1], 0.0, None)  # (B,11)
        profile = np.clip(1.0 - np.abs(self._across_upper) ** 3, 0.0, 1.0)
        columns = np.stack([gap, np.minimum(UPPER_TOOTH * profile, 0.55 * gap),
                            np.minimum(LOWER_TOOTH * profile, 0.25 * gap)], -1)  # (B,11,3)
        table = np.zeros((len(shape), self.mesh.num_vertices, 3))
        table[:, self.mesh.mouth_upper] = columns
        table[:, self.mesh.mouth_lower] = columns
        table = torch.as_tensor(table, dtype=torch.float32, device=device)
        gap_t, h_up, h_low = sub.interpolate(table, faces).unbind(1)
        a, v, gap_s = sub.interpolate(self._static, faces).unbind(1)
        px = torch.as_tensor(pose[:, 5] * self.size / 2.0, dtype=torch.float32, device=device)[sub.batch]  # per unit
        from_upper, from_lower = v * gap_t, (1.0 - v) * gap_t
        nearest = torch.minimum(from_upper, from_lower)

        # The cavity: darker with depth and in the shadow under the upper teeth, the tongue in its lower part.
        depth = (nearest / (0.5 * gap_t).clamp(min=1e-6)).clamp(0.0, 1.0)
        tongue = ((v - 0.55) / 0.3).clamp(0.0, 1.0) * (1.0 - 0.3 * depth)
        upper_teeth = torch.maximum(self.split * gap_s, h_up if not self.shows_teeth else torch.zeros_like(h_up))
        shadow = 0.5 + 0.5 * ((from_upper - upper_teeth) * px / 4.0).clamp(0.0, 1.0)
        inside = (self.cavity + (self.tongue - self.cavity) * tongue[:, None]) * ((1.0 - 0.5 * depth) * shadow)[:, None]
        # The source's mouth, each part moving with its lip: upper part down to the split, lower part below it.
        for lip_distance, part, to_v in ((from_upper, self.split, lambda d: d),
                                         (from_lower, 1.0 - self.split, lambda d: 1.0 - d)):
            height = part * gap_s
            cover = ((height - lip_distance) * px + 0.5).clamp(0.0, 1.0) * (height * px > 0.5)
            v_s = to_v((lip_distance / gap_s.clamp(min=1e-6)).clamp(0.0, 1.0))
            inside = inside + cover[:, None] * (self._source_at(a, v_s) - inside)
        if not self.shows_teeth:
            edges = torch.as_tensor(_TOOTH_EDGES, dtype=torch.float32, device=device)
            seams = torch.exp(-0.5 * ((a[:, None] - edges) / 0.02) ** 2).sum(1).clamp(max=1.0)
            for lip_distance, height in ((from_lower, h_low), (from_upper, h_up)):
                cover = ((height - lip_distance) * px + 0.5).clamp(0.0, 1.0) * (height * px > 0.5)
                down = (lip_distance / height.clamp(min=1e-6)).clamp(0.0, 1.0)
                rise = (2.0 * down).clamp(max=1.0)
                shadow = 0.6 + 0.4 * rise * rise * (3.0 - 2.0 * rise)  # in the shadow under the lip
                shade = (1.0 - 0.5 * a**2) * shadow * (1.0 - 0.15 * seams)
                inside = inside + cover[:, None] * (self.teeth * shade[:, None] - inside)
        # Blended in by the extra opening, and over the first pixel and a half from the lips.
        alpha = torch.as_tensor(weight, dtype=torch.float32, device=device)[sub.batch]
        alpha = alpha * (nearest * px / 1.5).clamp(0.0, 1.0)
        colours[index] = colours[index] + alpha[:, None] * (inside - colours[index])

    def _source_at(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(P,3) the source crop at mouth coordinates (across ``a``, lip-to-lip ``v``) of its own mouth."""
        ends = []
        for contour, across in zip(self._contours, (self._across_upper, self._across_lower)):
            across = torch.as_tensor(across, dtype=torch.float32, device=a.device)
            k = torch.searchsorted(across, a.clamp(float(across[0]), float(across[-1]))).clamp(1, len(across) - 1)
            t = ((a - across[k - 1]) / (across[k] - across[k - 1]).clamp(min=1e-9)).clamp(0.0, 1.0)[:, None]
            ends.append(contour[k - 1] + t * (contour[k] - contour[k - 1]))
        xy = (1.0 - v)[:, None] * ends[0] + v[:, None] * ends[1]
        grid = torch.stack([xy[:, 0], -xy[:, 1]], 1).view(1, 1, -1, 2)
        out = F.grid_sample(self.picture, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0, :, 0].t()
