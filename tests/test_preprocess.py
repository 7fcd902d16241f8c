"""Real-video preprocessing on videos made here: a photo moving over a textured background (known
camera path, zoom and roll), a file that is not a video, a video without a face, a too-short one."""

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from mimaface.data.clipstore import list_clips, read_dataset_info
from mimaface.data.preprocess import (
    LOG_NAME,
    PreprocessConfig,
    _assign_splits,
    _read_identity_csv,
    box_moves_less_than,
    face_segments,
    preprocess_videos,
    resample_frames,
    shift_inside,
    smooth_boxes,
    split_range,
)
from mimaface.demo import asset_path
from mimaface.face3d.pipeline import render_motion
from mimaface.media import load_image, write_video

SIZE = 128
FRAMES = 48


def textured_background(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (height // 24 + 2, width // 24 + 2, 3)).astype(np.uint8)
    background = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC)).astype(np.float32)
    background += 30 * np.sin(np.arange(width) / 7.0)[None, :, None]
    return np.clip(background, 0, 255).astype(np.uint8)


def moving_portrait_video(frames: int = FRAMES, width: int = 480, height: int = 360):
    """The bundled portrait (256 px) pasted into a larger frame along a known path: its centre
    moves 180 px right and along an arc, it zooms in by 15 % and rolls +-10 degrees."""
    portrait = Image.fromarray(load_image(asset_path("portrait.jpg")))
    t = np.arange(frames)
    position = np.stack([width / 2 - 90 + 180 * t / (frames - 1),
                         height / 2 - 10 + 30 * np.sin(np.pi * t / (frames - 1))], 1)
    zoom = 1.0 + 0.15 * t / (frames - 1)
    roll = 10.0 * np.sin(2 * np.pi * t / frames)
    background = textured_background(width, height)
    opaque = Image.new("L", portrait.size, 255)
    centre = np.array([128.0, 128.0])
    out = []
    for pos, z, angle in zip(position, zoom, roll):
        a = np.deg2rad(angle)
        inv = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / z  # frame -> photo pixels
        origin = centre - inv @ pos
        coeffs = (inv[0, 0], inv[0, 1], origin[0], inv[1, 0], inv[1, 1], origin[1])
        photo = np.asarray(portrait.transform((width, height), Image.AFFINE, coeffs, Image.BICUBIC), np.float32)
        alpha = np.asarray(opaque.transform((width, height), Image.AFFINE, coeffs, Image.BILINEAR))[..., None] / 255.0
        out.append((photo * alpha + background * (1 - alpha)).astype(np.uint8))
    return np.stack(out), {"position": position, "zoom": zoom, "roll": roll}


def photo_to_frame(truth: dict, t: int, p: np.ndarray) -> np.ndarray:
    a = np.deg2rad(truth["roll"][t])
    rot_t = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    return truth["position"][t] + truth["zoom"][t] * rot_t @ (p - 128.0)


def frame_to_photo(truth: dict, t: int, q: np.ndarray) -> np.ndarray:
    a = np.deg2rad(truth["roll"][t])
    rot_t = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    return 128.0 + rot_t.T @ (q - truth["position"][t]) / truth["zoom"][t]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("preprocess")
    videos, output = base / "videos", base / "out"
    (videos / "alice").mkdir(parents=True)
    (videos / "bob").mkdir()
    frames, truth = moving_portrait_video()
    write_video(videos / "alice" / "x.mp4", frames, 25.0)
    (videos / "bob" / "corrupt.mp4").write_text("this is not a video\n")
    write_video(videos / "bob" / "noface.mp4", np.stack([textured_background(320, 240, s) for s in range(20)]), 25.0)
    write_video(videos / "bob" / "short.mp4", frames[:6], 25.0)
    handler = _Collect()
    logger = logging.getLogger("mimaface.preprocess")
    logger.addHandler(handler)
    try:
        summary = preprocess_videos(videos, output, PreprocessConfig(size=SIZE, workers=2), progress=False)
    finally:
        logger.removeHandler(handler)
    return {"videos": videos, "output": output, "summary": summary, "truth": truth, "warnings": handler.messages}


def test_the_good_video_becomes_one_clip_of_the_right_size(run):
    out = run["output"]
    info = read_dataset_info(out)
    assert info["source"] == "preprocess" and info["size"] == SIZE
    assert info["identities"] == {"train": ["alice"], "test": []}
    clips = list_clips(out, "train")
    assert [(c.identity, c.clip) for c in clips] == [("alice", "x-000")]
    assert list_clips(out, "test") == []
    ref = clips[0]
    frames, renders, motion = ref.frames(), ref.renders(), ref.motion()
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert renders.shape == (FRAMES, SIZE, SIZE) and renders.dtype == np.uint8
    assert motion.num_frames == FRAMES and motion.image_size == (SIZE, SIZE) and motion.fps == pytest.approx(25.0)
    assert motion.landmarks.shape == (FRAMES, 478, 3)
    meta = ref.info()
    assert meta["video"] == "alice/x.mp4" and (meta["start_frame"], meta["end_frame"]) == (0, FRAMES)
    assert run["summary"]["processed"] == 1 and run["summary"]["clips"] == 1 and run["summary"]["frames"] == FRAMES
    # the crop shows the face: the render covers a good part of the middle of the frame
    assert (renders[:, SIZE // 4: 3 * SIZE // 4, SIZE // 4: 3 * SIZE // 4] > 0).mean() > 0.5


def test_the_crop_follows_the_face(run):
    ref = list_clips(run["output"], "train")[0]
    truth = run["truth"]
    landmarks = ref.motion().landmarks[:, :468, :2]
    centre = landmarks.mean(1)
    # in the crop, the face stays at the centre (within 4 % of the crop size) ...
    assert np.abs(centre - SIZE / 2).max() < 0.04 * SIZE
    assert centre.std(0).max() < 0.015 * SIZE
    # ... while in the video it moves by 180 px: map the crop landmarks back with the stored boxes
    boxes = np.array(ref.info()["crop_boxes"])  # left, top, side
    in_video = centre * boxes[:, 2:3] / SIZE + boxes[:, :2]
    assert np.ptp(in_video[:, 0]) > 150
    # and there they follow the known path of the photo
    anchor = frame_to_photo(truth, 0, in_video[0])
    predicted = np.stack([photo_to_frame(truth, t, anchor) for t in range(FRAMES)])
    assert np.linalg.norm(in_video - predicted, axis=1).mean() < 3.0
    # the crop is about crop_scale x the face: the face (mesh landmarks' extent) is 1/1.8 of it or so
    extent = (landmarks.max(1) - landmarks.min(1)).max(1)
    assert 0.45 * SIZE < np.median(extent) < 0.65 * SIZE


def test_the_coefficients_match_the_known_motion(run):
    motion = list_clips(run["output"], "train")[0].motion()
    truth = run["truth"]
    tx, ty, scale = motion.pose[:, 3], motion.pose[:, 4], motion.pose[:, 5]
    # the crop removed the camera path and the zoom: placement and size stay nearly constant
    assert np.ptp(tx) < 0.05 and np.ptp(ty) < 0.05  # normalised units (2 = the crop's height)
    assert np.ptp(scale) / scale.mean() < 0.05
    # the known roll is in the pose (the crop does not rotate)
    roll = motion.pose[:, 2] - motion.pose[:, 2].mean()
    expected = truth["roll"] - truth["roll"].mean()
    assert np.abs(roll - expected).mean() < 1.5
    assert np.corrcoef(roll, expected)[0, 1] > 0.98
    assert np.abs(motion.pose[:, 0]).max() < 15 and np.abs(motion.pose[:, 1]).max() < 15  # a frontal photo


def test_the_stored_renders_are_render_motion_of_the_stored_motion(run):
    ref = list_clips(run["output"], "train")[0]
    motion = ref.motion()
    again = np.stack([image[..., 0] for image, _ in render_motion(motion, (SIZE, SIZE), progress=False)])
    np.testing.assert_array_equal(again, ref.renders())


def test_bad_videos_are_logged_and_skipped(run):
    summary, out = run["summary"], run["output"]
    assert summary["videos"] == 4 and summary["failed"] == 3
    errors = {f["video"]: f["error"] for f in summary["failures"]}
    assert "not a readable video" in errors["bob/corrupt.mp4"]
    assert "no face" in errors["bob/noface.mp4"]
    assert "too short" in errors["bob/short.mp4"]
    records = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    status = {r["video"]: r["status"] for r in records if "video" in r}
    assert status == {"alice/x.mp4": "ok", "bob/corrupt.mp4": "failed", "bob/noface.mp4": "failed",
                      "bob/short.mp4": "failed"}
    assert records[-1]["event"] == "end"
    assert not (out / "train" / "bob").exists()
    assert len([m for m in run["warnings"] if m.startswith("skipped")]) == 3


def test_a_rerun_skips_everything_and_a_missing_clip_is_made_again(run):
    out, videos = run["output"], run["videos"]
    clip = out / "train" / "alice" / "x-000"
    stamp = (clip / "frames.npy").stat().st_mtime_ns
    again = preprocess_videos(videos, out, PreprocessConfig(size=SIZE, workers=1), progress=False)
    assert (again["processed"], again["resumed"], again["skipped_failed"], again["clips"]) == (0, 1, 3, 0)
    assert (clip / "frames.npy").stat().st_mtime_ns == stamp
    before = np.load(clip / "frames.npy")
    shutil.rmtree(clip)
    third = preprocess_videos(videos, out, PreprocessConfig(size=SIZE, workers=1), progress=False)
    assert (third["processed"], third["resumed"], third["clips"]) == (1, 0, 1)
    assert np.abs(np.load(clip / "frames.npy").astype(int) - before).mean() < 0.5  # the same crop


def test_a_different_size_into_the_same_output_is_refused(run, tmp_path):
    from mimaface.errors import InputError

    with pytest.raises(InputError, match="size"):
        preprocess_videos(run["videos"], run["output"], PreprocessConfig(size=64, workers=1), progress=False)


# ---------------------------------------------------------------------------------- the pieces


def test_csv_identities_and_unlisted_videos(tmp_path):
    videos = tmp_path / "flat"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (videos / name).write_text("not a video")
    csv = tmp_path / "ids.csv"
    csv.write_text("video,speaker\na.mp4,id 1\nb,id2\n")
    assert _read_identity_csv(csv) == {"a.mp4": "id_1", "b": "id2"}
    summary = preprocess_videos(videos, tmp_path / "out", PreprocessConfig(identities_csv=csv, workers=1),
                                progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / LOG_NAME).read_text().splitlines()]
    identity = {r["video"]: r["identity"] for r in records if "video" in r}
    assert identity == {"a.mp4": "id_1", "b.mp4": "id2", "c.mp4": None}
    assert summary["failed"] == 3 and "no identity" in {f["video"]: f["error"] for f in summary["failures"]}["c.mp4"]


def test_splits_never_share_an_identity(tmp_path):
    names = {f"id{i:02d}" for i in range(20)}
    split = _assign_splits(names, tmp_path, PreprocessConfig(test_fraction=0.2))
    test = {n for n, s in split.items() if s == "test"}
    assert len(test) == 4 and set(split) == names
    # stable: the same choice again
    assert _assign_splits(names, tmp_path, PreprocessConfig(test_fraction=0.2)) == split
    explicit = _assign_splits(names, tmp_path, PreprocessConfig(test_identities=("id03",)))
    assert {n for n, s in explicit.items() if s == "test"} == {"id03"}
    # identities already in the output keep their split
    (tmp_path / "train" / "id03").mkdir(parents=True)
    kept = _assign_splits(names, tmp_path, PreprocessConfig(test_fraction=0.5))
    assert kept["id03"] == "train" and sum(s == "test" for s in kept.values()) == 10
    from mimaface.errors import InputError

    with pytest.raises(InputError, match="both splits"):
        _assign_splits(names, tmp_path, PreprocessConfig(test_identities=("id03",)))


def test_box_smoothing_keeps_slow_motion_and_removes_jitter():
    t = np.arange(100, dtype=float)
    truth = np.stack([100 + 2.0 * t, 50 + 0.01 * (t - 50) ** 2, 200 + 0.3 * t], 1)  # linear, quadratic
    noisy = truth + np.random.default_rng(0).normal(0, 2.0, truth.shape)
    noisy[40] += 30  # an outlier frame
    smoothed = smooth_boxes(noisy, 25.0, 1.0)
    assert np.abs(smoothed - truth).max() < 2.0  # ends included: no lag, no pull towards the middle
    # jitter gone: second differences 20x smaller than the input's (true path: 0.02)
    assert np.abs(np.diff(smoothed, 2, axis=0)).max() < np.abs(np.diff(noisy, 2, axis=0)).max() / 20
    assert np.allclose(smooth_boxes(truth[:3], 25.0, 1.0), truth[:3])  # too short to filter
    still = np.array([[100.0, 80.0, 200.0]]) + np.random.default_rng(1).normal(0, 1.0, (50, 3))
    assert box_moves_less_than(still, 0.03)  # one fixed box for this clip
    assert not box_moves_less_than(truth, 0.03)


def test_shift_inside_moves_boxes_into_the_frame():
    box = np.array([[10.0, 22.0, 50.0]])  # centre x, y, side: reaches 15 px past the left edge of 80 x 60
    inside = shift_inside(box, 80, 60)
    np.testing.assert_allclose(inside, [[25.0, 25.0, 50.0]])
    assert np.allclose(shift_inside(np.array([[10.0, 10.0, 100.0]]), 80, 60), [[40.0, 30.0, 100.0]])


def test_segments_clip_ranges_and_resampling():
    found = np.ones(100, bool)
    found[10:13] = False  # bridged
    found[50:80] = False  # splits
    found[95:] = False
    assert face_segments(found, max_gap=5) == [(0, 50), (80, 95)]
    assert face_segments(np.zeros(5, bool), 5) == []
    pieces = split_range(0, 600, 250)
    assert pieces == [(0, 200), (200, 400), (400, 600)]
    assert split_range(10, 20, 250) == [(10, 20)]
    kept = list(resample_frames(iter(range(30)), 30.0, 25.0))
    assert len(kept) == 25 and kept[:7] == [0, 1, 2, 4, 5, 6, 7]
    assert list(resample_frames(iter(range(5)), 25.0, 25.0)) == list(range(5))
    assert list(resample_frames(iter(range(3)), 10.0, 20.0)) == [0, 1, 1, 2, 2]  # nearest, ties to the later
