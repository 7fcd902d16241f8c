import numpy as np
import pytest
import skimage.data as skimage_data
from PIL import Image

from mimaface.errors import FaceNotFoundError, InputError
from mimaface.face3d.landmarks import (
    NUM_LANDMARKS,
    LandmarkDetector,
    TrackResult,
    detect_face,
    fill_missing,
    track_faces,
)
from mimaface.media import iter_video_frames, write_video


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def face_crop(astronaut) -> np.ndarray:
    """The astronaut's head with some margin (her face spans about x 178-270, y 71-177)."""
    return astronaut[20:240, 120:330]


def paste(canvas, crop, scale, x, y, flip=False):
    """Paste a resized crop with its top-left corner at (x, y); returns the crop's centre."""
    crop = crop[:, ::-1] if flip else crop
    image = np.asarray(Image.fromarray(crop).resize((round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                                                    Image.BICUBIC))
    canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
    return np.array([x + image.shape[1] / 2.0, y + image.shape[0] / 2.0])


def test_astronaut_has_one_face_with_sensible_landmarks(astronaut):
    with LandmarkDetector() as detector:
        faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    points = face.landmarks
    assert points.shape == (NUM_LANDMARKS, 3) and points.dtype == np.float32
    height, width = astronaut.shape[:2]
    assert (points[:, 0] > 0).all() and (points[:, 0] < width).all()
    assert (points[:, 1] > 0).all() and (points[:, 1] < height).all()
    assert face.bbox == pytest.approx((*points[:, :2].min(0), *points[:, :2].max(0)))
    x0, y0, x1, y1 = face.bbox
    assert 150 < x0 < 200 and 240 < x1 < 300 and 40 < y0 < 100 and 150 < y1 < 200
    # irises between the corners of their eyes (468-472: image-left eye, 473-477: image-right eye)
    for iris, (a, b) in ((slice(468, 473), (33, 133)), (slice(473, 478), (362, 263))):
        lo, hi = sorted((points[a, 0], points[b, 0]))
        assert (points[iris, 0] > lo).all() and (points[iris, 0] < hi).all()
        eye_y = (points[a, 1] + points[b, 1]) / 2
        assert np.abs(points[iris, 1] - eye_y).max() < (hi - lo) / 2
    # depth: smaller is closer, and the nose tip is the closest part of the face
    assert points[1, 2] < np.median(points[:, 2]) - 10
    assert detect_face(astronaut).bbox == pytest.approx(face.bbox, abs=1.0)


def test_pixel_coordinates_follow_the_image_size(astronaut):
    """X = x*W, Y = y*H, Z = z*W: padding the image moves the points but does not scale them."""
    base = detect_face(astronaut).landmarks
    padded = np.pad(astronaut, ((64, 0), (128, 0), (0, 0)), constant_values=128)
    moved = detect_face(padded).landmarks
    assert np.abs(moved - base - [128, 64, 0]).mean(0) == pytest.approx([0, 0, 0], abs=1.5)
    wide = np.pad(astronaut, ((0, 0), (0, 300), (0, 0)), constant_values=128)  # Z would change if scaled by H
    assert np.abs(detect_face(wide).landmarks - base).mean(0) == pytest.approx([0, 0, 0], abs=1.5)


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_face(kind):
    rng = np.random.default_rng(1)
    image = np.full((360, 480, 3), 200, np.uint8) if kind == "blank" else rng.integers(0, 256, (360, 480, 3), np.uint8)
    with LandmarkDetector() as detector:
        assert detector.detect(image) == []
    with pytest.raises(FaceNotFoundError, match="empty.png: no face found"):
        detect_face(image, source="empty.png")


def test_grey_and_rgba_inputs_through_load_image(astronaut, tmp_path):
    from mimaface.media import load_image

    grey = np.asarray(Image.fromarray(astronaut).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:, :100, 3] = 0  # a transparent strip on the left
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    reference = detect_face(astronaut).center
    for name in ("grey.png", "rgba.png"):
        face = detect_face(load_image(tmp_path / name))
        assert np.linalg.norm(face.center - reference) < 4
    with pytest.raises(InputError, match="load_image"):
        detect_face(grey)  # arrays must already be RGB


def test_several_faces_largest_first(face_crop):
    canvas = np.full((600, 800, 3), 120, np.uint8)
    centres = [paste(canvas, face_crop, 1.2, 60, 300),  # largest
               paste(canvas, face_crop, 0.9, 560, 40, flip=True),
               paste(canvas, face_crop, 0.7, 380, 380)]  # too small for MediaPipe's own detector here
    with LandmarkDetector() as detector:
        faces = detector.detect(canvas)
    assert len(faces) == 3
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    for face, centre in zip(faces, centres):
        assert np.linalg.norm(face.center - centre) < 20
    with LandmarkDetector(small_faces=False) as detector:
        assert len(detector.detect(canvas)) < 3  # without the tiled search, the small face is missed
    assert np.linalg.norm(detect_face(canvas).center - centres[0]) < 20
    assert np.linalg.norm(detect_face(canvas, face_index=1).center - centres[1]) < 20
    assert np.linalg.norm(detect_face(canvas, face_index=2).center - centres[2]) < 20
    with pytest.raises(FaceNotFoundError, match="group.png: face index 3 is out of range: there are 3 face"):
        detect_face(canvas, face_index=3, source="group.png")
    with pytest.raises(InputError):
        detect_face(canvas, face_index=-1)


def moving_face_video(face_crop, count=24):
    """A small face moving right and down (8 px a frame, far enough to leave the tracking window it
    starts in), and a mirrored face that stays in place but grows from smaller to larger than the
    moving one; with the true centres of both."""
    frames, moving, growing = [], [], []
    for t in range(count):
        canvas = np.full((480, 640, 3), 100, np.uint8)
        moving.append(paste(canvas, face_crop, 0.8, 150 + 8 * t, 30 + 2 * t))
        scale = 0.55 + 0.45 * t / (count - 1)
        growing.append(paste(canvas, face_crop, scale, round(530 - 105 * scale), round(360 - 110 * scale), flip=True))
        frames.append(canvas)
    return frames, np.array(moving), np.array(growing)


def box_centres(landmarks):
    return (landmarks[:, :, :2].min(1) + landmarks[:, :, :2].max(1)) / 2


def test_tracking_follows_the_chosen_face(face_crop, tmp_path):
    frames, moving, growing = moving_face_video(face_crop)
    write_video(tmp_path / "clip.mp4", frames, 25)  # through H.264, for realistic noise
    result = track_faces(iter_video_frames(tmp_path / "clip.mp4"), num_frames=len(frames), progress=False)
    assert isinstance(result, TrackResult)
    assert result.landmarks.shape == (len(frames), NUM_LANDMARKS, 3) and result.landmarks.dtype == np.float32
    assert result.found.all()
    observed = box_centres(result.landmarks)
    # the face box sits at a fixed offset in the pasted crop: remove it, then it must follow the motion
    offset = np.median(observed - moving, axis=0)
    assert np.abs(offset).max() < 20
    assert np.abs(observed - moving - offset).max() < 2
    # steady: the motion is linear, so second differences are small (about 0.15 px with MediaPipe's
    # video-mode tracking, 0.55 px with per-frame detection)
    assert np.abs(np.diff(result.landmarks[:, :, :2], 2, axis=0)).mean() < 0.3

    # the other face, chosen while it is the smaller one, is followed after it becomes the larger one
    other = track_faces(frames, face_index=1, progress=False)
    assert other.found.all()
    areas = [np.ptp(lm[:, 0]) * np.ptp(lm[:, 1]) for lm in (result.landmarks[-1], other.landmarks[-1])]
    assert areas[1] > 1.1 * areas[0]
    assert np.abs(box_centres(other.landmarks) - growing).max() < 15
    with pytest.raises(FaceNotFoundError, match="clip.mp4: face index 2 is out of range: frame 0.* 2 face"):
        track_faces(frames[:2], face_index=2, progress=False, source="clip.mp4")


def test_tracking_across_frames_without_the_face(face_crop):
    frames = moving_face_video(face_crop, count=8)[0]
    blank = np.full_like(frames[0], 100)
    frames = [blank, blank] + frames[:3] + [blank] * 2 + frames[5:]
    result = track_faces(frames, progress=False)
    assert result.found.tolist() == [False] * 2 + [True] * 3 + [False] * 2 + [True] * 3
    assert np.isnan(result.landmarks[~result.found]).all() and not np.isnan(result.landmarks[result.found]).any()


def synthetic_track(found):
    found = np.array(found, bool)
    t = np.arange(len(found), dtype=np.float32)[:, None, None]
    landmarks = t * [2.0, -1.0, 0.5] + np.arange(NUM_LANDMARKS)[None, :, None]  # (T, 478, 3)
    landmarks = landmarks.astype(np.float32)
    truth = landmarks.copy()
    landmarks[~found] = np.nan
    return TrackResult(landmarks, found), truth


def test_fill_missing_interpolates_short_gaps():
    result, truth = synthetic_track([0, 1, 1, 0, 0, 1, 1, 0, 1, 0])
    filled = fill_missing(result, max_gap=2, source="clip.mp4")
    assert filled.shape == truth.shape and not np.isnan(filled).any()
    assert np.allclose(filled[[3, 4, 7]], truth[[3, 4, 7]])  # inner gaps: linear
    assert np.allclose(filled[0], truth[1]) and np.allclose(filled[9], truth[8])  # ends: held
    assert np.allclose(filled[result.found], truth[result.found])


def test_fill_missing_rejects_long_gaps():
    result, _ = synthetic_track([1] * 12 + [0] * 29 + [1] * 5 + [0] * 3)
    with pytest.raises(FaceNotFoundError, match=r"clip\.mp4.*frames 12-40") as info:
        fill_missing(result, max_gap=12, source="clip.mp4")
    assert "46-48" not in str(info.value)  # a short gap at the end is fine
    with pytest.raises(FaceNotFoundError, match="12-40, 46-48"):
        fill_missing(result, max_gap=2, source="clip.mp4")
    empty, _ = synthetic_track([0] * 5)
    with pytest.raises(FaceNotFoundError, match="no face found in any of the 5 frames"):
        fill_missing(empty, max_gap=10, source="clip.mp4")
