"""``MeshWarpPipeline``: the learning-free engine. The source crop itself moves with the face mesh.

Per source (cached while the same crop and coefficients come back): the source's landmarks (given
with its coefficients, else detected in the crop, else the fit's own), the warp mesh
(:class:`~mimaface.warp.mesh.WarpMesh`: the face mesh pinned to those landmarks, its eye and mouth
holes covered, rings out to the image border) in source positions, and the source-side textures
and colours of the eye and mouth painters. Per batch of frames:

1. the warp mesh's target positions: the source's identity with the frame's pose, expression and
   gaze (lids and lips that close further than the source's pulled shut), and the rings moved by
   the decaying head motion;
2. the target mesh rasterised (at most ``map_size`` pixels) and the source-minus-target vertex
   positions interpolated over it: for every output pixel, where to read the source; the map is
   piecewise affine, so when rasterised smaller than the crop it is upsampled bilinearly;
3. ``grid_sample`` of the source crop at full resolution along that map;
4. inside the target eye and mouth openings (rasterised at full resolution): irises moved to the
   gaze (:mod:`.eyes`) and the inside of a mouth opened wider than the source's (:mod:`.mouth`);
   the lash line of shut eyes;
5. I_R, when asked for (``output_renders``): the target face shaded as ``render_grey`` shades it,
   from the same raster (at the map's resolution, upsampled), with the eyes and mouth as holes.

The warp is deterministic and frame-independent: no flicker, no clip seams. ``clip_length`` only
sets how many frames each yielded :class:`GeneratedClip` holds.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from mimaface.errors import InputError
from mimaface.face3d.camera import pixels_to_normalized
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.landmarks import LandmarkDetector
from mimaface.face3d.model import NUM_LANDMARKS, NUM_VERTICES, FaceModel
from mimaface.face3d.render import interpolate, rasterize, vertex_normals
from mimaface.limits import limits
from mimaface.pipelines.pipeline import (
    GeneratedClip,
    MIMAFacePipeline,
    MIMAFacePipelineOutput,
    join_clips,
    to_uint8,
)
from mimaface.values import is_whole
from mimaface.warp.eyes import EyePainter
from mimaface.warp.mesh import (
    EYE_CLOSE,
    FALLOFF,
    HEAD_SLOPE,
    LIP_CLOSE,
    MAT_EYE_LEFT,
    MAT_EYE_RIGHT,
    MAT_MOUTH,
    MIN_GAP,
    NECK_FALLOFF,
    RINGS,
    Target,
    WarpMesh,
)
from mimaface.warp.mouth import MouthPainter
from mimaface.warp.pixels import PixelSet, rasterize_window

OUTPUT_TYPES = ("np", "pil", "pt")
MIN_SIZE = 32  # the smallest crop side accepted (pixels); the largest is limits().output_side
MAX_CLIP_BYTES = 2**32  # the most one yielded clip's float frames may hold
GREY_LIGHT, GREY_AMBIENT = (0.3, 0.3, 1.0), 0.25  # render_grey's defaults, for I_R
DETECTION_AGREEMENT = 0.06  # detections further from the fit than this (mean, in face widths) are not used
# The diffusion pipeline's keyword arguments, accepted (and ignored) so callers can drive both engines alike.
SAMPLING_KWARGS = frozenset(inspect.signature(MIMAFacePipeline.__call__).parameters) - {
    "self", "source_image", "motion", "clip_length", "output_type", "return_dict"}


@dataclass
class WarpConfig:
    """Settings of :class:`MeshWarpPipeline` (lengths in face-model units unless stated)."""

    map_size: int | None = 256  # the warp map is rasterised at most this many pixels wide (None: full size)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # sampling of the source crop
    batch_size: int = 8  # frames per rasteriser call
    rings: tuple[float, ...] = RINGS  # ring vertices, fractions of the decay distance (the last holds still)
    falloff: float = FALLOFF  # the motion outside the face decays over this many face radii (at most to the border)
    head_slope: float = HEAD_SLOPE  # beyond the oval the head proxy falls back this much depth per unit out (parallax)
    neck_falloff: float = NECK_FALLOFF  # ... and to 0 this many face radii below the jaw (at most 0.7 of the way down)
    min_gap: float = MIN_GAP  # fold guard: a ray's vertices move apart by at most 1 - this of their spacing
    eye_close: float = EYE_CLOSE  # lids closer than this fraction of the neutral opening shut (fully at 40 %)
    lip_close: float = LIP_CLOSE  # lips closer than this are pulled shut (fully at 40 %)
    mouth_open_full: float = 0.04  # extra lip opening over the source's at which the painted interior is opaque
    iris_scale: float = 1.1  # iris disc radius as moved, in the face model's iris radii
    iris_shift_full: float = 0.25  # iris displacement (iris radii) from which the iris is fully repainted
    mouth: bool = True  # paint the inside of opened mouths
    irises: bool = True  # move irises with the gaze
    # Without landmarks in the source coefficients, detect them in the crop (once per source) and pin the
    # mesh to them: the fit alone is a few pixels off at the lips and lids, which the warp shows.
    detect_landmarks: bool = True

    def __post_init__(self) -> None:
        if self.map_size is not None and self.map_size < MIN_SIZE:  # (never rasterised larger than the crop)
            raise InputError(f"map_size must be None or at least {MIN_SIZE}, got {self.map_size}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise InputError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        positive = ("falloff", "neck_falloff", "eye_close", "lip_close", "mouth_open_full", "iris_scale",
                    "iris_shift_full")
        for name in positive:
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.min_gap < 1:
            raise InputError(f"min_gap must be in (0, 1), got {self.min_gap}")
        rings = list(self.rings)
        if not rings or rings != sorted(set(rings)) or not 0 < rings[0] <= rings[-1] < 1:
            raise InputError(f"rings must be increasing fractions in (0, 1), got {self.rings}")


@dataclass
class _Rig:
    """One source crop prepared for warping."""

    key: bytes
    size: int
    mesh: WarpMesh
    image: torch.Tensor  # (1,3,S,S) float in [0, 1]
    faces: torch.Tensor  # (F,3)
    base_grid: torch.Tensor  # (S,S,2) every output pixel's own position, grid_sample coordinates
    openings: torch.Tensor  # (F,) bool: eye-fan and mouth-strip triangles
    opening_index: torch.Tensor  # (F_o,) their indices
    eyes: EyePainter
    mouth: MouthPainter


def _grid(xy: torch.Tensor) -> torch.Tensor:
    """Normalised image coordinates (x right, y up) -> grid_sample's (x right, y down)."""
    return xy * torch.tensor([1.0, -1.0], dtype=xy.dtype, device=xy.device)


class MeshWarpPipeline:
    """Learning-free engine: warps the source crop by the face mesh."""

    def __init__(self, config: WarpConfig | None = None, face_model: FaceModel | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.config = config or WarpConfig()
        self.face_model = face_model or FaceModel.load()
        self.device = torch.device(device)
        self._rig: _Rig | None = None

    # -- the two entry points, as MIMAFacePipeline's ----------------------------------------------
    @torch.no_grad()
    def __call__(self, source_image: np.ndarray, motion: MotionCoefficients, *,
                 source_coefficients: MotionCoefficients, clip_length: int = 25, output_type: str = "np",
                 return_dict: bool = True, **unused_sampling_kwargs) -> MIMAFacePipelineOutput | tuple:
        """All frames at once (see :meth:`generate_clips`); ``MIMAFacePipelineOutput`` or a tuple."""
        clips = list(self.generate_clips(source_image, motion, source_coefficients=source_coefficients,
                                         clip_length=clip_length, output_type=output_type, **unused_sampling_kwargs))
        frames, renders = join_clips(clips, output_type)
        starts = [clip.start for clip in clips]
        if not return_dict:
            return frames, renders, starts
        return MIMAFacePipelineOutput(frames=frames, renders=renders, clip_starts=starts)

    @torch.no_grad()
    def generate_clips(self, source_image: np.ndarray, motion: MotionCoefficients, *,
                       source_coefficients: MotionCoefficients, clip_length: int = 25, output_type: str = "np",
                       output_renders: bool = True, **unused_sampling_kwargs) -> Iterator[GeneratedClip]:
        """Warp ``source_image`` (S,S,3) uint8, an aligned crop, by ``motion`` (per-frame coefficients in
        that crop's frame; its pose, expression and gaze are used, with the source's identity) from
        ``source_coefficients`` (the crop's own one-frame fit). Yields the frames in order, ``clip_length``
        at a time: frames (n,S,S,3) float32 in [0, 1] for "np", (n,3,S,S) for "pt", PIL images for "pil",
        and I_R (n,S,S) uint8 (None with ``output_renders`` False: the warp needs no I_R, and shading it
        costs a tenth of a frame). The diffusion pipeline's sampling arguments are accepted and ignored."""
        unknown = set(unused_sampling_kwargs) - SAMPLING_KWARGS
        if unknown:
            raise TypeError(f"generate_clips() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        self._check(source_image, motion, source_coefficients, clip_length, output_type)
        rig = self._prepare(source_image, source_coefficients)
        batch = self.config.batch_size
        for clip_index, start in enumerate(range(0, motion.num_frames, clip_length)):
            stop = min(start + clip_length, motion.num_frames)
            parts = [self._frames(rig, motion.pose[b:min(b + batch, stop)], motion.expression[b:min(b + batch, stop)],
                                  motion.gaze[b:min(b + batch, stop)], output_renders)
                     for b in range(start, stop, batch)]
            frames = torch.cat([p[0] for p in parts])
            renders = np.concatenate([p[1] for p in parts]) if output_renders else None
            yield GeneratedClip(start, self._postprocess(frames, output_type), renders, clip_index)

    # -- pieces -------------------------------------------------------------------------------------
    def _check(self, image: np.ndarray, motion: MotionCoefficients, source: MotionCoefficients, clip_length: int,
               output_type: str) -> None:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 \
                or image.shape[0] != image.shape[1]:
            got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise InputError(f"the source crop must be a square (S, S, 3) uint8 array, got {got}")
        if not MIN_SIZE <= image.shape[0] <= limits().output_side:
            raise InputError(f"the source crop must be {MIN_SIZE} to {limits().output_side} pixels wide (the limit of "
                             f"an output's side), got {image.shape[0]}")
        for name, coefficients in (("motion", motion), ("source_coefficients", source)):
            if not isinstance(coefficients, MotionCoefficients):
                raise InputError(f"{name} must be MotionCoefficients, got {type(coefficients).__name__}")
            coefficients.for_model(self.face_model)
            if coefficients.num_frames < 1:
                raise InputError(f"{name} has no frames")
            if not all(np.isfinite(a).all() for a in (coefficients.pose, coefficients.expression, coefficients.gaze)):
                raise InputError(f"{name} holds non-finite coefficients")
            if (coefficients.pose[:, 5] <= 0).any():
                raise InputError(f"{name}: the pose scale must be positive")
        if not np.isfinite(source.identity).all():
            raise InputError("source_coefficients holds non-finite identity coefficients")
        if source.landmarks is not None and np.shape(source.landmarks)[1:2] != (NUM_LANDMARKS,):
            raise InputError(f"source_coefficients.landmarks must be (T, {NUM_LANDMARKS}, 2 or 3), "
                             f"got {np.shape(source.landmarks)}")
        if not is_whole(clip_length) or clip_length < 1:
            raise InputError(f"clip_length must be a positive integer, got {clip_length!r}")
        clip_bytes = min(clip_length, motion.num_frames) * image.shape[0] ** 2 * 3 * 4
        if clip_bytes > MAX_CLIP_BYTES:
            raise InputError(f"a clip of {clip_length} frames of {image.shape[0]} px would hold "
                             f"{clip_bytes / 2**30:.1f} GiB; use a shorter clip_length")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")

    def _prepare(self, image: np.ndarray, coefficients: MotionCoefficients) -> _Rig:
        """The source's rig (reused while the same crop and coefficients come back)."""
        digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
        arrays = [coefficients.pose[0], coefficients.expression[0], coefficients.gaze[0], coefficients.identity]
        if coefficients.landmarks is not None:
            arrays.append(coefficients.landmarks)
        for array in arrays:
            digest.update(np.ascontiguousarray(array, np.float64).tobytes())
        key = digest.digest()
        if self._rig is not None and self._rig.key == key:
            return self._rig
        cfg, device, size = self.config, self.device, image.shape[0]
        landmarks = None
        if coefficients.landmarks is not None:  # detected, in pixels of the frame the coefficients refer to
            landmarks = pixels_to_normalized(np.asarray(coefficients.landmarks, np.float64)[0, :, :2],
                                             *coefficients.image_size)
        elif cfg.detect_landmarks:
            landmarks = self._detect(image, coefficients)
        try:
            mesh = WarpMesh(self.face_model, coefficients.identity, coefficients.pose[0], coefficients.expression[0],
                            coefficients.gaze[0], rings=cfg.rings, falloff=cfg.falloff, neck_falloff=cfg.neck_falloff,
                            min_gap=cfg.min_gap, eye_close=cfg.eye_close, lip_close=cfg.lip_close,
                            head_slope=cfg.head_slope, landmarks=landmarks)
        except ValueError as exc:
            raise InputError(f"cannot build the warp mesh for this source: {exc}") from None
        faces = torch.as_tensor(mesh.faces, device=device)
        material = torch.as_tensor(mesh.material, device=device)
        openings = (material == MAT_EYE_LEFT) | (material == MAT_EYE_RIGHT) | (material == MAT_MOUTH)
        pixels = torch.arange(size, device=device, dtype=torch.float32)
        centres = (2.0 * pixels + 1.0) / size - 1.0
        base = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1)  # (S,S,2): x by column, y by row
        source_vertices = torch.as_tensor(mesh.source, dtype=torch.float32, device=device)
        opening_index = torch.nonzero(openings).squeeze(1)
        source_pixels = rasterize_window(source_vertices[None], faces[opening_index], size)
        source_pixels.tri = opening_index[source_pixels.tri]
        picture = np.asarray(image, np.float32) / np.float32(255.0)  # (S,S,3)
        tensor = torch.as_tensor(picture, device=device).permute(2, 0, 1).unsqueeze(0).contiguous()
        eyes = EyePainter(mesh, picture, source_pixels, iris_scale=cfg.iris_scale, shift_full=cfg.iris_shift_full,
                          device=device)
        mouth = MouthPainter(mesh, picture, tensor, source_pixels.subset(material[source_pixels.tri] == MAT_MOUTH),
                             open_full=cfg.mouth_open_full)
        self._rig = _Rig(key, size, mesh, tensor, faces, base, openings, opening_index, eyes, mouth)
        return self._rig

    def _detect(self, image: np.ndarray, coefficients: MotionCoefficients) -> np.ndarray | None:
        """The source's landmarks (478,2), normalised, detected in the crop: the detected face closest to
        the fit, if its landmarks lie within DETECTION_AGREEMENT face widths of the fit's on average."""
        size = image.shape[0]
        c = coefficients
        fitted = self.face_model.landmarks(c.pose[0], c.identity, c.expression[0], c.gaze[0])[:, :2]
        with LandmarkDetector(max_faces=2, small_faces=False) as detector:
            faces = detector.detect(image)
        if not faces:
            return None
        found = [pixels_to_normalized(face.landmarks[:, :2].astype(np.float64), size, size) for face in faces]
        error = [float(np.linalg.norm(f - fitted, axis=1).mean()) for f in found]
        width = float(np.linalg.norm(fitted[454] - fitted[234]))  # cheek to cheek
        best = int(np.argmin(error))
        return found[best] if error[best] <= DETECTION_AGREEMENT * width else None

    def _frames(self, rig: _Rig, pose: np.ndarray, expression: np.ndarray, gaze: np.ndarray,
                renders: bool) -> tuple[torch.Tensor, np.ndarray | None]:
        """Frames (B,S,S,3) float in [0, 1] and I_R (B,S,S) uint8 (``renders``; else None) of one batch."""
        cfg, size, device = self.config, rig.size, self.device
        target = rig.mesh.target(pose, expression, gaze)
        verts = torch.as_tensor(target.vertices, dtype=torch.float32, device=device)
        b = len(verts)
        step = size if cfg.map_size is None else min(size, cfg.map_size)
        fragments = rasterize(verts, rig.faces, step, step)
        # Source minus target position per vertex: interpolated, it is each pixel's offset to read from.
        offset = _grid(torch.as_tensor(target.source, dtype=torch.float32, device=device) - verts[..., :2])
        field = interpolate(offset, rig.faces, fragments)  # (B,step,step,2); the mesh covers every pixel
        if step != size:
            field = F.interpolate(field.permute(0, 3, 1, 2).contiguous(), size=(size, size), mode="bilinear",
                                  align_corners=False).permute(0, 2, 3, 1)
        grid = rig.base_grid + field
        frames = F.grid_sample(rig.image.expand(b, -1, -1, -1), grid, mode=cfg.interpolation, padding_mode="border",
                               align_corners=False).permute(0, 2, 3, 1).contiguous()
        self._paint_openings(rig, target, pose, fragments, verts, grid, frames)
        rig.eyes.lashes(frames, target.vertices, target.pulled, pose[:, 5])
        frames.clamp_(0.0, 1.0)
        return frames, self._grey(rig, fragments, verts, size) if renders else None

    def _grey(self, rig: _Rig, fragments, verts: torch.Tensor, size: int) -> np.ndarray:
        """I_R (B,S,S) uint8: the target face as ``render_grey`` shades it, from the warp's own raster
        (the face's triangles where they are visible; the eyes and mouth are holes), upsampled from
        the map's resolution when that is smaller."""
        b, step = fragments.face_index.shape[:2]
        count = len(self.face_model.triangles)  # the warp mesh starts with the face's triangles
        face = rig.faces[:count]
        pixels = PixelSet.where(fragments, torch.arange(len(rig.faces), device=verts.device) < count)
        normals = pixels.interpolate(vertex_normals(verts[:, :NUM_VERTICES], face), rig.faces)
        # render_grey's shading: normals turned towards the camera, Lambert with its light and ambient.
        normals = normals * torch.where(normals[:, 2:3] < 0, -1.0, 1.0)
        light = torch.tensor(GREY_LIGHT, dtype=torch.float32, device=verts.device)
        lambert = (normals @ (light / light.norm())) * torch.rsqrt((normals * normals).sum(1).clamp(min=1e-24))
        grey = torch.zeros(b * step * step, dtype=torch.float32, device=verts.device)
        grey[pixels.flat] = (GREY_AMBIENT + (1.0 - GREY_AMBIENT) * lambert.clamp(min=0.0)).clamp(0.0, 1.0)
        grey = grey.view(b, 1, step, step)
        if step != size:
            grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        return (grey[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    def _paint_openings(self, rig: _Rig, target: Target, pose: np.ndarray, fragments, verts: torch.Tensor,
                        grid: torch.Tensor, frames: torch.Tensor) -> None:
        """Moved irises and opened mouths, painted into ``frames`` (B,S,S,3) in place."""
        cfg, size = self.config, rig.size
        strengths = rig.eyes.strengths(target.vertices) if cfg.irises else np.zeros((len(verts), 2))
        openness = rig.mouth.openness(target.shape) if cfg.mouth else np.zeros(len(verts))
        if not strengths.any() and not openness.any():
            return
        step = fragments.face_index.shape[-1]
        if step == size:
            pixels = PixelSet.where(fragments, rig.openings)
        else:
            # The openings at full resolution, where the coarse raster sees them (not hidden by the face).
            pixels = rasterize_window(verts, rig.faces[rig.opening_index], size)
            pixels.tri = rig.opening_index[pixels.tri]
            index = fragments.face_index
            seen = (index >= 0) & rig.openings[index.clamp(min=0)]
            in_frame = pixels.flat - pixels.batch * size * size
            row = torch.div(in_frame, size, rounding_mode="floor") * step // size
            col = (in_frame % size) * step // size
            # Kept where the coarse raster shows an opening within one of its pixels.
            keep = torch.zeros(len(pixels), dtype=torch.bool, device=verts.device)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    keep |= seen[pixels.batch, (row + dr).clamp(0, step - 1), (col + dc).clamp(0, step - 1)]
            pixels = pixels.subset(keep)
        if len(pixels) == 0:
            return
        colours = frames.view(-1, 3)[pixels.flat]
        if strengths.any():
            source_xy = _grid(grid.reshape(-1, 2)[pixels.flat])
            rig.eyes.paint(pixels, colours, source_xy, target.vertices, strengths)
        if openness.any():
            rig.mouth.paint(pixels, colours, target.shape, pose, rig.faces, openness)
        frames.view(-1, 3)[pixels.flat] = colours

    @staticmethod
    def _postprocess(frames: torch.Tensor, output_type: str):
        if output_type == "pt":
            return frames.permute(0, 3, 1, 2).cpu()
        array = frames.cpu().numpy()
        if output_type == "np":
            return array
        return [PIL.Image.fromarray(frame) for frame in to_uint8(array)]
