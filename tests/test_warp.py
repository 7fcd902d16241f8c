"""The learning-free warp engine (mimaface.warp): exact geometry, mouth, eyes, border, API."""

from __future__ import annotations

import dataclasses

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.draw import polygon

from mimaface.errors import InputError
from mimaface.face3d.camera import normalized_to_pixels, pixels_to_normalized
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.face3d.model import FaceModel
from mimaface.face3d.pipeline import render_motion
from mimaface.pipelines.pipeline import MIMAFacePipelineOutput, to_uint8
from mimaface.warp import MeshWarpPipeline, WarpConfig, WarpMesh
from mimaface.warp.eyes import inverse_2x2
from mimaface.warp.mesh import MAT_OUTER, Openings

POSE_NAMES = ("yaw", "pitch", "roll", "tx", "ty", "scale")
GAZE_NAMES = ("gazeLeftX", "gazeLeftY", "gazeRightX", "gazeRightY")


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def edit(coefficients: MotionCoefficients, model: FaceModel, **changes: float) -> MotionCoefficients:
    """One frame of ``coefficients`` with some channels changed: pose and gaze names are added to,
    blendshape names are set."""
    pose, expression, gaze = (getattr(coefficients, name)[:1].copy() for name in ("pose", "expression", "gaze"))
    for name, value in changes.items():
        if name in POSE_NAMES:
            pose[0, POSE_NAMES.index(name)] += value
        elif name in GAZE_NAMES:
            gaze[0, GAZE_NAMES.index(name)] += value
        else:
            expression[0, model.expression_names.index(name)] = value
    return dataclasses.replace(coefficients, pose=pose, expression=expression, gaze=gaze, landmarks=None)


def warp(pipe: MeshWarpPipeline, image: np.ndarray, motion: MotionCoefficients,
         source: MotionCoefficients) -> np.ndarray:
    """The uint8 frames of ``motion``."""
    return to_uint8(pipe(image, motion, source_coefficients=source).frames)


def texture(size: int) -> np.ndarray:
    """A checkerboard (8 px squares) over smooth colour ramps: every shift and turn shows."""
    y, x = np.mgrid[0:size, 0:size]
    board = ((x // 8 + y // 8) % 2).astype(float)
    rgb = np.stack([0.25 + 0.5 * board, 0.3 + 0.4 * np.sin(x / 9.0) ** 2, 0.2 + 0.6 * y / size], -1)
    return (rgb * 255).round().astype(np.uint8)


def face_inside(coefficients: MotionCoefficients, size: int, erode: int = 3) -> np.ndarray:
    """The face silhouette of ``coefficients`` (holes filled), eroded by ``erode`` pixels."""
    _, mask = next(render_motion(coefficients, (size, size), progress=False))
    return ndimage.binary_erosion(ndimage.binary_fill_holes(mask), iterations=erode)


def loop_mask(points_px: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    rr, cc = polygon(points_px[:, 1] - 0.5, points_px[:, 0] - 0.5, (size, size))
    mask[rr, cc] = True
    return mask


def landmarks_px(model: FaceModel, coefficients: MotionCoefficients, size: int) -> np.ndarray:
    c = coefficients
    return normalized_to_pixels(model.landmarks(c.pose[0], c.identity, c.expression[0], c.gaze[0]), size, size)


@pytest.fixture(scope="module")
def pipe(model) -> MeshWarpPipeline:
    return MeshWarpPipeline(face_model=model)


@pytest.fixture(scope="module")
def synthetic(model) -> MotionCoefficients:
    """A frontal neutral face (closed mouth) a little off the crop's centre."""
    return MotionCoefficients(np.array([[0.0, 0.0, 0.0, 0.02, -0.05, 0.8]]), np.zeros((1, model.num_expressions)),
                              np.zeros((1, 4)), np.zeros(model.num_identities), model.expression_names,
                              model.identity_names)


@pytest.fixture(scope="module")
def astronaut():
    """skimage's astronaut through prepare_source at 512 px: (crop, coefficients)."""
    skimage_data = pytest.importorskip("skimage.data")
    from mimaface.pipelines.source import prepare_source

    source = prepare_source(skimage_data.astronaut(), 512)
    return source.crop, source.coefficients


# ---- geometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [256, 512])  # 512: the map is rasterised at 256 and upsampled
def test_translation_moves_the_face_by_exactly_that(pipe, model, synthetic, size):
    image = texture(size)
    motion = edit(synthetic, model, tx=8 * 2 / size, ty=-4 * 2 / size)  # 8 px right, 4 px down
    out = warp(pipe, image, motion, synthetic)[0].astype(int)
    inside = face_inside(motion, size)
    assert inside.sum() > 0.1 * size * size
    shifted = np.roll(np.roll(image, 8, 1), 4, 0).astype(int)
    assert np.abs(out - shifted)[inside].max() <= 1  # tolerance: 1 grey level (float rounding)
    assert np.abs(out - image.astype(int))[inside].mean() > 20  # it did move


def test_roll_rotates_the_face_by_exactly_that(pipe, model, synthetic):
    size, angle = 512, 10.0
    image = texture(size)
    motion = edit(synthetic, model, roll=angle)
    out = warp(pipe, image, motion, synthetic)[0].astype(int)
    # The analytic rotation about the pose's centre (tx, ty), sampled as the engine samples (bilinear).
    centre = synthetic.pose[0, 3:5]
    a = np.deg2rad(angle)
    xs = (2.0 * np.arange(size) + 1.0) / size - 1.0
    x, y = np.meshgrid(xs, -xs)
    rel = np.stack([x, y], -1) - centre
    inverse = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    at = rel @ inverse.T + centre
    grid = torch.tensor(np.stack([at[..., 0], -at[..., 1]], -1)[None], dtype=torch.float32)
    rotated = F.grid_sample(torch.tensor(image).permute(2, 0, 1)[None].float() / 255, grid, mode="bilinear",
                            padding_mode="border", align_corners=False)[0].permute(1, 2, 0).numpy()
    inside = face_inside(motion, size)
    assert np.abs(out - to_uint8(rotated).astype(int))[inside].max() <= 1  # tolerance: 1 grey level


@pytest.mark.parametrize("size", [256, 512])
def test_the_sources_own_coefficients_give_the_source(pipe, astronaut, size):
    crop, coefficients = astronaut
    crop = np.asarray(PIL.Image.fromarray(crop).resize((size, size), PIL.Image.BICUBIC))
    out = warp(pipe, crop, coefficients, coefficients)
    assert np.abs(out[0].astype(int) - crop).max() <= 1


def test_detected_landmarks_pin_the_mesh_and_keep_the_identity(model, astronaut):
    crop, coefficients = astronaut
    # Landmarks a few pixels off the fit, as a detector's are.
    detected = landmarks_px(model, coefficients, 512) + np.random.default_rng(0).normal(0.0, 2.0, (478, 3))
    source = dataclasses.replace(coefficients, landmarks=detected[None])
    pipe = MeshWarpPipeline(face_model=model)
    assert np.abs(warp(pipe, crop, source, source)[0].astype(int) - crop).max() <= 1
    c = source
    mesh = WarpMesh(model, c.identity, c.pose[0], c.expression[0], c.gaze[0],
                    landmarks=pixels_to_normalized(detected[:, :2], 512, 512))
    assert np.abs(normalized_to_pixels(mesh.source[:478], 512, 512)[:, :2] - detected[:, :2]).max() < 1e-6
    # Lids the model shuts still shut, whatever the detections said: every upper rim vertex reaches
    # down to (a little over) the lower one facing it.
    blink = edit(c, model, eyeBlinkLeft=1.0, eyeBlinkRight=1.0, eyeWideLeft=0.0, eyeWideRight=0.0)
    shape = mesh.shape(blink.expression)[0]
    openings = Openings.of(model)
    for upper, lower in zip(openings.eye_upper, openings.eye_lower):
        assert (shape[upper, 1] - shape[lower, 1]).max() < 0.0
        assert (c.expression[0] == blink.expression[0]).sum() == model.num_expressions - 4


def test_the_border_and_the_shoulders_hold_still_while_the_head_turns(pipe, model, astronaut):
    crop, coefficients = astronaut
    size = crop.shape[0]
    for turn in ({"yaw": 20.0}, {"yaw": -20.0}, {"pitch": 12.0}, {"roll": -12.0}):
        out = warp(pipe, crop, edit(coefficients, model, **turn), coefficients)[0].astype(int)
        diff = np.abs(out - crop).max(-1)
        assert diff[face_inside(coefficients, size)].mean() > 10  # the face moved
        for corner in (diff[:16, :16], diff[:16, -16:], diff[-16:, :16], diff[-16:, -16:]):
            assert corner.max() == 0
        assert diff[-size // 32:].max() == 0  # the bottom rows
        assert diff[-size // 8:, :size // 5].max() == 0 and diff[-size // 8:, -size // 5:].max() == 0  # shoulders


def test_the_head_proxy_turns_the_rings_with_parallax(model, astronaut):
    """Against a flat proxy (head_slope 0), a turn crowds the first ring towards the oval on the side
    the face turns to and spreads it out on the other side."""
    _, c = astronaut
    pose = c.pose.copy()
    pose[0, 0] += 15.0

    def ring_offsets(slope: float) -> tuple[np.ndarray, np.ndarray, float]:
        mesh = WarpMesh(model, c.identity, c.pose[0], c.expression[0], c.gaze[0], head_slope=slope)
        target = mesh.target(pose, c.expression, c.gaze).vertices[0]
        oval, ring = mesh.openings.oval, mesh.ring_idx[0]
        nose_motion = target[4, 0] - mesh.source[4, 0]
        offsets = target[ring, 0] - target[oval, 0], mesh.source[ring, 0] - mesh.source[oval, 0]
        return *offsets, nose_motion, mesh.ring_weight[0] > 0.8

    flat, source, nose_motion, free = ring_offsets(0.0)
    curved, *_ = ring_offsets(2.0)
    towards = np.sign(nose_motion)
    side = np.where(free, towards * source, 0.0)  # the rays at the two sides (above the neck)
    far, near = np.argmax(side), np.argmin(side)
    assert towards * (curved[far] - flat[far]) < -0.01  # crowded towards the oval
    assert towards * (curved[near] - flat[near]) < -0.01  # spread out from it


def test_no_fold_overs_for_head_motion_in_range(model, astronaut):
    _, c = astronaut
    mesh = WarpMesh(model, c.identity, c.pose[0], c.expression[0], c.gaze[0])
    outer = mesh.faces[mesh.material == MAT_OUTER]

    def areas(vertices: np.ndarray) -> np.ndarray:
        p = vertices[..., outer, :2]
        e1, e2 = p[..., 1, :] - p[..., 0, :], p[..., 2, :] - p[..., 0, :]
        return e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]

    rng = np.random.default_rng(0)
    n = 300
    pose = np.tile(c.pose[0], (n, 1))
    pose[:, :3] += rng.uniform([-30, -20, -15], [30, 20, 15], (n, 3))
    pose[:, 3:5] += rng.uniform(-0.05, 0.05, (n, 2))
    pose[:, 5] *= rng.uniform(0.95, 1.05, n)
    expression = np.tile(c.expression[0], (n, 1))
    expression[:, model.expression_names.index("jawOpen")] = rng.uniform(0.0, 1.0, n)
    target = mesh.target(pose, expression, np.tile(c.gaze[0], (n, 1))).vertices
    ratio = areas(target) / areas(mesh.source)
    # No outer triangle flips or collapses: the worst, a far turn with a strong tilt (yaw +27, pitch -19,
    # roll -13 on a source pitched -9) where the far side crowds behind the face, keeps 4 % of its area.
    assert ratio.min() > 0.03
    # The last ring, the border and the corners never move, however hard the rings inside are clamped.
    still = np.concatenate([mesh.ring_idx[-1], mesh.border_idx, mesh.corner_idx])
    assert np.array_equal(target[:, still, :2], np.broadcast_to(mesh.source[still, :2], (n, len(still), 2)))


# ---- mouth -------------------------------------------------------------------------------------
def test_a_mouth_no_more_open_than_the_sources_is_the_source(pipe, model, astronaut):
    crop, coefficients = astronaut
    size = crop.shape[0]
    jaw = float(coefficients.expression[0, model.expression_names.index("jawOpen")])
    # The same opening, the brows raised: the lower face is exactly the source.
    out = warp(pipe, crop, edit(coefficients, model, jawOpen=jaw, browInnerUp=1.0), coefficients)[0]
    points = landmarks_px(model, coefficients, size)
    lips = points[np.concatenate([model.regions["lips_outer_upper"], model.regions["lips_outer_lower"]])]
    top, bottom = int(lips[:, 1].min()) - 10, int(lips[:, 1].max()) + 10
    left, right = int(lips[:, 0].min()) - 10, int(lips[:, 0].max()) + 10
    assert np.abs(out[top:bottom, left:right].astype(int) - crop[top:bottom, left:right]).max() <= 1
    assert np.abs(out[:top].astype(int) - crop[:top]).max() > 20  # the brows did move
    # Closing further: nothing is painted, the frame is the plain warp.
    closed = edit(coefficients, model, jawOpen=0.0)
    plain = MeshWarpPipeline(WarpConfig(mouth=False, irises=False), face_model=model)
    assert np.array_equal(warp(pipe, crop, closed, coefficients), warp(plain, crop, closed, coefficients))


def mouth_opening(model: FaceModel, motion: MotionCoefficients, size: int, erode: int = 2) -> np.ndarray:
    """The target's inner-lip opening (pixels), a little eroded."""
    points = landmarks_px(model, motion, size)
    loop = Openings.of(model)
    contour = np.concatenate([points[loop.lips_upper], points[loop.lips_lower[::-1][1:-1]]])
    return ndimage.binary_erosion(loop_mask(contour, size), iterations=erode)


def test_an_opened_mouth_shows_a_dark_cavity_and_the_sources_teeth(pipe, model, astronaut):
    crop, coefficients = astronaut
    motion = edit(coefficients, model, jawOpen=0.8)
    out = warp(pipe, crop, motion, coefficients)[0]
    opening = mouth_opening(model, motion, crop.shape[0])
    assert opening.sum() > 2000
    lum_out, lum_src = luminance(out)[opening], luminance(crop)[opening]
    assert lum_out.mean() < lum_src.mean() - 50  # a dark cavity
    assert (lum_out < 60).mean() > 0.4
    # The astronaut smiles with her upper teeth showing: they stay, tied to the upper lip.
    teeth = (lum_out > 170) & (np.ptp(out[opening].astype(int), axis=1) < 60)
    assert teeth.sum() > 300


def test_an_opened_closed_mouth_gets_painted_teeth(pipe, model, synthetic):
    size = 256
    rng = np.random.default_rng(1)
    skin = np.clip(np.array([200, 150, 125]) + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
    motion = edit(synthetic, model, jawOpen=0.8)
    out = warp(pipe, skin, motion, synthetic)[0]
    opening = mouth_opening(model, motion, size)
    assert opening.sum() > 300
    teeth = (luminance(out) > luminance(skin).max() + 10) & (np.ptp(out.astype(int), axis=-1) < 50)
    assert not ((luminance(skin) > luminance(skin).max() + 10).any())  # none before
    assert teeth[opening].sum() > 40  # teeth appear, within the opening
    assert not teeth[~ndimage.binary_dilation(opening, iterations=4)].any()
    assert (luminance(out)[opening] < 80).mean() > 0.3  # and a dark cavity between them


# ---- eyes --------------------------------------------------------------------------------------
def eye_openings(model: FaceModel, coefficients: MotionCoefficients, size: int) -> list[np.ndarray]:
    points = landmarks_px(model, coefficients, size)
    return [loop_mask(points[rim], size) for rim in Openings.of(model).eye_rims]


def test_a_blink_covers_the_eyes_with_lid_skin(pipe, model, astronaut):
    crop, coefficients = astronaut
    motion = edit(coefficients, model, eyeBlinkLeft=1.0, eyeBlinkRight=1.0, eyeWideLeft=0.0, eyeWideRight=0.0)
    out = warp(pipe, crop, motion, coefficients)[0]

    def iris(image: np.ndarray) -> np.ndarray:
        return luminance(image) < 70

    def sclera(image: np.ndarray) -> np.ndarray:  # bright and white, where skin is warm
        rgb = image.astype(int)
        return (luminance(image) > 150) & (rgb[..., 0] - rgb[..., 2] < 30)

    for eye in eye_openings(model, coefficients, crop.shape[0]):
        eye = ndimage.binary_erosion(eye, iterations=2)
        assert iris(crop)[eye].sum() > 60 and sclera(crop)[eye].sum() > 30  # the source's eye is open
        assert iris(out)[eye].sum() < 0.25 * iris(crop)[eye].sum()  # the iris is gone (a thin lash line stays)
        assert sclera(out)[eye].sum() <= 0.05 * sclera(crop)[eye].sum()  # and so is the sclera
        skin = np.median(out[eye].astype(float), 0)
        assert skin[0] > skin[2] + 30 and luminance(skin) > 120  # lid skin: warm and light


def iris_shift(source: np.ndarray, out: np.ndarray, centre: np.ndarray, radius: float, eye: np.ndarray) -> np.ndarray:
    """The integer shift (dx, dy) that best matches the source's iris (its disc within the eye
    opening) in ``out``: least mean squared difference."""
    rows, cols = np.nonzero(eye & (np.hypot(*(np.mgrid[0:eye.shape[0], 0:eye.shape[1]][::-1] + 0.5
                                                - centre[:, None, None])) < 0.8 * radius))
    best, shift = np.inf, None
    for dy in range(-4, 5):
        for dx in range(-12, 13):
            error = ((out[rows + dy, cols + dx].astype(float) - source[rows, cols]) ** 2).mean()
            if error < best:
                best, shift = error, np.array([dx, dy])
    return shift


def test_a_gaze_change_moves_the_iris_by_the_expected_pixels(pipe, model, astronaut):
    crop, coefficients = astronaut
    size = crop.shape[0]
    motion = edit(coefficients, model, gazeLeftX=0.12, gazeRightX=0.12, gazeLeftY=-0.03, gazeRightY=-0.03)
    out = warp(pipe, crop, motion, coefficients)[0]
    before, after = landmarks_px(model, coefficients, size), landmarks_px(model, motion, size)
    for eye, centre in zip(eye_openings(model, coefficients, size), (473, 468)):
        expected = after[centre, :2] - before[centre, :2]
        assert abs(expected[0]) > 5  # a visible move
        radius = float(np.linalg.norm(before[centre + 1, :2] - before[centre, :2]))
        assert np.abs(iris_shift(crop, out, before[centre, :2], radius, eye) - expected).max() <= 1.0  # pixels
    # Everything but the eyes is the source.
    eyes = ndimage.binary_dilation(np.logical_or(*eye_openings(model, coefficients, size)), iterations=8)
    assert np.abs(out.astype(int) - crop)[~eyes].max() <= 1


# ---- the pipeline ------------------------------------------------------------------------------
def test_frames_come_in_clip_length_chunks_in_every_output_type(model, synthetic):
    size, n = 64, 7
    pipe = MeshWarpPipeline(WarpConfig(batch_size=2), face_model=model)
    image = texture(size)
    motion = dataclasses.replace(synthetic, pose=np.repeat(synthetic.pose, n, 0),
                                 expression=np.repeat(synthetic.expression, n, 0), gaze=np.repeat(synthetic.gaze, n, 0))
    motion.pose[:, 0] += np.linspace(0, 20, n)
    kwargs = {"num_inference_steps": 3, "guidance_scale": 2.0, "generator": torch.Generator().manual_seed(0)}
    clips = list(pipe.generate_clips(image, motion, source_coefficients=synthetic, clip_length=3, **kwargs))
    assert [c.start for c in clips] == [0, 3, 6] and [len(c) for c in clips] == [3, 3, 1]
    assert [c.clip_index for c in clips] == [0, 1, 2]
    frames = np.concatenate([c.frames for c in clips])
    assert frames.shape == (n, size, size, 3) and frames.dtype == np.float32
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    renders = np.concatenate([c.renders for c in clips])
    assert renders.shape == (n, size, size) and renders.dtype == np.uint8 and (renders > 0).any()
    # Frames differ as the head turns, and do not depend on the chunking.
    assert np.abs(frames[-1] - frames[0]).mean() > 0.005
    out = pipe(image, motion, source_coefficients=synthetic, clip_length=5)
    assert isinstance(out, MIMAFacePipelineOutput) and out.clip_starts == [0, 5]
    assert np.array_equal(out.frames, frames) and np.array_equal(out.renders, renders)
    pt = pipe(image, motion, source_coefficients=synthetic, output_type="pt", return_dict=False)
    assert isinstance(pt, tuple) and tuple(pt[0].shape) == (n, 3, size, size)
    assert torch.equal(pt[0], torch.from_numpy(frames).permute(0, 3, 1, 2))
    pil = pipe(image, motion, source_coefficients=synthetic, output_type="pil").frames
    assert len(pil) == n and pil[2].size == (size, size)
    assert np.array_equal(np.asarray(pil[2]), to_uint8(frames[2]))
    with pytest.raises(TypeError, match="num_inference_stepz"):
        pipe(image, motion, source_coefficients=synthetic, num_inference_stepz=3)
    # Without I_R: the same frames, in the same chunks.
    bare = list(pipe.generate_clips(image, motion, source_coefficients=synthetic, clip_length=3, output_renders=False))
    assert [len(c) for c in bare] == [3, 3, 1] and all(c.renders is None for c in bare)
    assert np.array_equal(np.concatenate([c.frames for c in bare]), frames)


def test_renders_are_render_grey_of_the_target_face(pipe, model, synthetic):
    size = 256
    motion = edit(synthetic, model, yaw=15.0, jawOpen=0.5)
    out = pipe(texture(size), motion, source_coefficients=synthetic)
    expected = next(render_motion(motion, (size, size), progress=False))[0][..., 0]
    assert np.abs(out.renders[0].astype(int) - expected).max() <= 1


def test_closed_form_inverses_invert():
    matrices = np.random.default_rng(0).normal(size=(5, 3, 2, 2))
    assert np.allclose(inverse_2x2(matrices) @ matrices, np.eye(2), atol=1e-9)


def test_bad_inputs_are_one_line_errors(pipe, model, synthetic):
    image = texture(64)
    for bad in (image[:, :32], image[..., 0], image.astype(np.float32), texture(16)):
        with pytest.raises(InputError):
            pipe(bad, synthetic, source_coefficients=synthetic)
    with pytest.raises(InputError, match="clip_length"):
        pipe(image, synthetic, source_coefficients=synthetic, clip_length=0)
    with pytest.raises(InputError, match="output_type"):
        pipe(image, synthetic, source_coefficients=synthetic, output_type="latent")
    # MotionCoefficients refuses these when it is made; the engine still checks arrays changed afterwards.
    broken = dataclasses.replace(synthetic, pose=synthetic.pose.copy())
    broken.pose[0, 2] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        pipe(image, broken, source_coefficients=synthetic)
    flat = dataclasses.replace(synthetic)
    flat.landmarks = np.zeros((478, 3))
    with pytest.raises(InputError, match="landmarks"):
        pipe(image, synthetic, source_coefficients=flat)
    with pytest.raises(InputError, match="GiB"):  # 20000 frames of 4096 px in one clip
        pipe(np.zeros((4096, 4096, 3), np.uint8), dataclasses.replace(
            synthetic, pose=np.repeat(synthetic.pose, 20000, 0), expression=np.repeat(synthetic.expression, 20000, 0),
            gaze=np.repeat(synthetic.gaze, 20000, 0)), source_coefficients=synthetic, clip_length=20000)
    for bad_config in ({"map_size": 8}, {"rings": (0.5, 0.25)}, {"min_gap": 1.0}, {"interpolation": "nearest"}):
        with pytest.raises(InputError):
            WarpConfig(**bad_config)
