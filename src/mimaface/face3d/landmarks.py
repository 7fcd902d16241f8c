"""Face landmarks: MediaPipe Face Mesh with irises (478 points), for images and videos.

Landmarks are returned in the **pixel** frame of :mod:`mimaface.face3d.camera`:
``X = x * W``, ``Y = y * H``, ``Z = z * W`` for MediaPipe's normalised ``(x, y, z)``.

Small faces. Face Mesh finds faces with MediaPipe's *short-range* detector, which runs on the
whole image shrunk to 128x128 and misses any face whose landmarks span less than about 13% of the
image's longer side (measured: a face 150 px tall in a 1280x720 frame is not found; in a group
photo typically none is). Therefore:

* :meth:`LandmarkDetector.detect` on still images (``video=False``, ``small_faces=True``) also
  searches overlapping tiles (half, quarter and eighth of the image's longer side, at half-tile
  strides, tiles of at least 256 px) and merges what it finds, preferring the coarsest pass and,
  within a pass, the tile in which the face lies furthest from the tile's edges. In tiles the
  detection threshold is raised to 0.7: at 0.5 a pile of poker chips passed for a face;
* :func:`track_faces` runs Face Mesh in video mode (landmarks tracked from frame to frame: on a
  moving face about 0.05 px of frame-to-frame jitter against 1 px for per-frame detection) on a
  square *window* 5 face sizes wide around the followed face (the whole frame when the face is
  large), so a small face is tracked as well as a large one. The window moves only when the face
  nears its edge, because each move restarts MediaPipe's tracker, which then needs a few frames
  to settle (about 1-2 px of extra jitter). When the face is lost, the whole frame is searched
  again as a still image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from mimaface.errors import FaceNotFoundError, InputError

NUM_LANDMARKS = 478
IRIS_LANDMARKS = slice(468, 478)  # 468-472: one iris (centre first), 473-477: the other

_MIN_TILE = 256  # px; smaller tiles would only find faces too small to be of use
_TILE_CONFIDENCE = 0.7  # detection threshold in tiles (0.5 finds poker chips in a group photo)
_TILE_LEVELS = 3  # tiles of 1/2, 1/4, 1/8 of the longer side
_WINDOW_FACES = 5.0  # tracking window side, in face sizes (the detector needs faces over ~13% of it)
_WINDOW_MARGIN = 0.6  # the window is moved when the face comes this close (in face sizes) to its edge
_WARMUP = 5  # follower iterations on the frame where it (re)starts
_MATCH_DISTANCE = 0.6  # centre distance, in face sizes, within which a face is the followed one ...
_MATCH_GROWTH = 0.3  # ... plus this much per frame since the face was last seen
_MATCH_MAX_DISTANCE = 2.5
_MATCH_SCALE = 1.5  # the size may change by at most this factor from the last frame it was seen


@dataclass
class DetectedFace:
    landmarks: np.ndarray  # (478, 3) float32, pixel coordinates (see the module notes)
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels: the extent of the landmarks

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray) -> DetectedFace:
        landmarks = np.asarray(landmarks, dtype=np.float32)
        x0, y0 = landmarks[:, :2].min(0)
        x1, y1 = landmarks[:, :2].max(0)
        return cls(landmarks, (float(x0), float(y0), float(x1), float(y1)))

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def size(self) -> float:
        """The longer side of the box, in pixels."""
        x0, y0, x1, y1 = self.bbox
        return max(x1 - x0, y1 - y0)

    @property
    def center(self) -> np.ndarray:
        x0, y0, x1, y1 = self.bbox
        return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])


Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end-exclusive


class LandmarkDetector:
    """MediaPipe Face Mesh (refined: 478 landmarks with irises). Use as a context manager.

    ``video=True`` keeps MediaPipe's tracker between calls: feed consecutive frames of one video
    (and the same ``region``), and call :meth:`reset` when the content jumps. ``small_faces``
    (still images only) adds the tiled search for faces too small for MediaPipe's detector.
    """

    def __init__(self, *, max_faces: int = 8, video: bool = False, min_detection_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5, small_faces: bool = True):
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError as err:  # pragma: no cover - mediapipe is a dependency
            raise ImportError("mimaface needs mediapipe==0.10.21 (with mediapipe.solutions) for face landmarks; "
                              "install it with `pip install mediapipe==0.10.21`") from err
        self.max_faces = max_faces
        self.video = video
        self.small_faces = small_faces and not video
        self._mesh = face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=max_faces, refine_landmarks=True,
                                        min_detection_confidence=min_detection_confidence,
                                        min_tracking_confidence=min_tracking_confidence)
        self._tile_mesh = None
        if self.small_faces:
            self._tile_mesh = face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
                min_detection_confidence=max(min_detection_confidence, _TILE_CONFIDENCE),
                min_tracking_confidence=min_tracking_confidence)

    def __enter__(self) -> LandmarkDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for mesh in (self._mesh, self._tile_mesh):
            if mesh is not None:
                mesh.close()
        self._mesh = self._tile_mesh = None

    def reset(self) -> None:
        """Forget the faces tracked so far (video mode)."""
        self._mesh.reset()

    def detect(self, image: np.ndarray, region: Region | None = None) -> list[DetectedFace]:
        """All faces in an RGB uint8 image (or in ``region`` of it), largest first.

        Coordinates are those of the whole image even when a region is given."""
        image = _check_image(image)
        if region is not None or not self.small_faces:
            return _by_area(self._process(image, region))
        height, width = image.shape[:2]
        candidates = [(0, 0.0, face) for face in self._process(image, None)]
        for level, tiles in enumerate(_tile_grid(width, height), start=1):
            for tile in tiles:
                for face in self._process(image, tile, self._tile_mesh):
                    margin = _margin_in_tile(face.bbox, tile, width, height) / max(face.size, 1.0)
                    if margin >= 0.0:  # a face cut by the tile's edge is found whole in another tile
                        candidates.append((level, margin, face))
        candidates.sort(key=lambda c: (c[0], -c[1]))
        kept: list[DetectedFace] = []
        for _, _, face in candidates:
            if all(_overlap(face.bbox, other.bbox) < 0.3 for other in kept):
                kept.append(face)
        return _by_area(kept)[: self.max_faces]

    def _process(self, image: np.ndarray, region: Region | None, mesh=None) -> list[DetectedFace]:
        mesh = mesh or self._mesh
        if mesh is None:
            raise RuntimeError("the LandmarkDetector is closed")
        x0 = y0 = 0
        if region is not None:
            x0, y0, x1, y1 = region
            image = np.ascontiguousarray(image[y0:y1, x0:x1])
        height, width = image.shape[:2]
        result = mesh.process(image)
        faces = []
        for face in result.multi_face_landmarks or ():
            points = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64)
            points *= (width, height, width)
            points[:, 0] += x0
            points[:, 1] += y0
            faces.append(DetectedFace.from_landmarks(points))
        return faces


def detect_face(image: np.ndarray, face_index: int | None = None, *, source: str | None = None) -> DetectedFace:
    """The largest face of an image, or with ``face_index=i`` the i-th largest (0 = largest).

    ``source`` (the file name) starts the error messages."""
    name = source or "the image"
    index = _check_index(face_index)
    with LandmarkDetector(max_faces=max(8, index + 1)) as detector:
        faces = detector.detect(_check_image(image, name))
    if not faces:
        raise FaceNotFoundError(f"{name}: no face found (faces must be roughly frontal, unobstructed, and at "
                                f"least about 40 px and 1/60 of the image's longer side across)")
    if index >= len(faces):
        raise FaceNotFoundError(f"{name}: face index {index} is out of range: there are {len(faces)} face(s), "
                                f"so use 0 to {len(faces) - 1} (0 is the largest)")
    return faces[index]


@dataclass
class TrackResult:
    landmarks: np.ndarray  # (T, 478, 3) float32 pixel coordinates, NaN where no face was found
    found: np.ndarray  # (T,) bool

    @property
    def num_frames(self) -> int:
        return len(self.found)


def track_faces(frames: Iterable[np.ndarray], *, face_index: int | None = None, num_frames: int | None = None,
                progress: bool = True, source: str | None = None) -> TrackResult:
    """Landmarks of one person through a video.

    The person is chosen on the first frame where any face is found (the largest face, or the
    ``face_index``-th largest); on later frames, the face that continues it (near its last position,
    of similar size) is taken, and a frame where none does counts as not found. ``num_frames`` is
    only the progress bar's total; ``source`` (the file name) starts the error messages."""
    name = source or "the video"
    index = _check_index(face_index)
    tracker = _Tracker(index, name)
    landmarks: list[np.ndarray] = []
    found: list[bool] = []
    missing = np.full((NUM_LANDMARKS, 3), np.nan, dtype=np.float32)
    with tracker, tqdm(total=num_frames, desc="landmarks", unit="frame", disable=not progress) as bar:
        for t, frame in enumerate(frames):
            face = tracker.step(t, _check_image(frame, f"{name}: frame {t}"))
            landmarks.append(missing if face is None else face.landmarks)
            found.append(face is not None)
            bar.update(1)
    if not landmarks:
        raise InputError(f"{name}: the video has no frames")
    return TrackResult(np.stack(landmarks), np.array(found, dtype=bool))


def fill_missing(result: TrackResult, max_gap: int, source: str) -> np.ndarray:
    """``(T, 478, 3)`` float64 landmarks with the frames without a face filled in.

    Runs of at most ``max_gap`` missing frames are interpolated linearly (or, at the start and
    end of the video, hold the nearest frame with a face); a longer run raises
    :class:`FaceNotFoundError` naming its frames (counted from 0)."""
    found = np.asarray(result.found, dtype=bool)
    total = len(found)
    if total == 0:
        raise InputError(f"{source}: the video has no frames")
    if not found.any():
        raise FaceNotFoundError(f"{source}: no face found in any of the {total} frames")
    runs = _missing_runs(found)
    long_runs = [(a, b) for a, b in runs if b - a > max_gap]
    if long_runs:
        shown = ", ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in long_runs[:8])
        more = f" and {len(long_runs) - 8} more" if len(long_runs) > 8 else ""
        raise FaceNotFoundError(
            f"{source}: no face in frames {shown}{more} (counting from 0; at most {max_gap} frames in a row "
            f"without a face are interpolated): trim the video or raise the allowed gap")
    out = np.asarray(result.landmarks, dtype=np.float64).copy()
    for a, b in runs:
        before, after = a - 1, b
        if before < 0:
            out[a:b] = out[after]
        elif after >= total:
            out[a:b] = out[before]
        else:
            w = ((np.arange(a, b) - before) / (after - before))[:, None, None]
            out[a:b] = (1.0 - w) * out[before] + w * out[after]
    return out


# -------------------------------------------------------------------------------------- helpers


class _Tracker:
    """Follows one face: video-mode Face Mesh on a window around it, full search when it is lost."""

    def __init__(self, face_index: int, name: str):
        self.face_index = face_index
        self.name = name
        self.finder = LandmarkDetector(max_faces=max(8, face_index + 1))
        self.follower = LandmarkDetector(video=True)
        self.last: DetectedFace | None = None  # the followed face, where it was last seen
        self.last_t = -1
        self.window: Region | None = None  # where the follower looks; None: its state is stale

    def __enter__(self) -> _Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.finder.close()
        self.follower.close()

    def step(self, t: int, frame: np.ndarray) -> DetectedFace | None:
        if self.last is None:
            faces = self.finder.detect(frame)
            if not faces:
                return None
            if self.face_index >= len(faces):
                raise FaceNotFoundError(
                    f"{self.name}: face index {self.face_index} is out of range: frame {t}, the first with a face, has "
                    f"{len(faces)} face(s), so use 0 to {len(faces) - 1} (0 is the largest)")
            return self._restart(t, frame, faces[self.face_index])
        gap = t - self.last_t - 1
        if self.window is not None and gap == 0:
            face = self._match(self.follower.detect(frame, self.window), gap)
            if face is not None:
                if not _window_fits(face, self.window, frame.shape[1], frame.shape[0]):
                    return self._restart(t, frame, face, self.window)
                self.last, self.last_t = face, t
                return face
        face = self._match(self.finder.detect(frame), gap)
        if face is None:
            self.window = None
            return None
        return self._restart(t, frame, face)

    def _restart(self, t: int, frame: np.ndarray, face: DetectedFace, old: Region | None = None) -> DetectedFace:
        """Place the window around ``face``; unless it stays where it was, restart the follower and
        run it a few times on this frame: its landmarks settle over a few iterations after a fresh
        detection, and would otherwise jitter on the following frames."""
        self.last, self.last_t = face, t
        height, width = frame.shape[:2]
        self.window = _window(face, width, height)
        if self.window != old:
            self.follower.reset()
            for _ in range(_WARMUP):
                settled = self._match(self.follower.detect(frame, self.window), 0)
                if settled is not None:
                    self.last = settled
        return self.last

    def _match(self, faces: list[DetectedFace], gap: int) -> DetectedFace | None:
        size = max(self.last.size, 1.0)
        limit = min(_MATCH_DISTANCE + _MATCH_GROWTH * gap, _MATCH_MAX_DISTANCE)
        best, best_distance = None, np.inf
        for face in faces:
            distance = float(np.linalg.norm(face.center - self.last.center)) / size
            ratio = max(face.size, 1.0) / size
            if distance <= limit and 1.0 / _MATCH_SCALE <= ratio <= _MATCH_SCALE and distance < best_distance:
                best, best_distance = face, distance
        return best


def _window_fits(face: DetectedFace, window: Region, width: int, height: int) -> bool:
    """Whether the face is still well inside the window (its size no longer matters: the detector,
    which needs the face large in the window, runs only when the follower restarts)."""
    return _margin_in_tile(face.bbox, window, width, height) >= _WINDOW_MARGIN * max(face.size, 1.0)


def _window(face: DetectedFace, width: int, height: int) -> Region:
    """A square ``_WINDOW_FACES`` face sizes wide around the face, kept inside the image; the whole
    image when that square would be nearly as large (then the window never has to move)."""
    side = int(round(_WINDOW_FACES * max(face.size, 1.0)))
    if side >= 0.8 * max(width, height):
        return 0, 0, width, height
    cx, cy = face.center

    def span(centre: float, length: int) -> tuple[int, int]:
        if side >= length:
            return 0, length
        start = int(round(min(max(centre - side / 2.0, 0.0), length - side)))
        return start, start + side

    x0, x1 = span(cx, width)
    y0, y1 = span(cy, height)
    return x0, y0, x1, y1


def _tile_grid(width: int, height: int) -> list[list[Region]]:
    """Square tiles of 1/2, 1/4, ... of the longer side, overlapping by half a tile."""
    levels = []
    longer = max(width, height)
    for level in range(1, _TILE_LEVELS + 1):
        side = longer // (2 ** level)
        if side < _MIN_TILE:
            break
        step = side // 2
        xs = list(range(0, max(width - side, 0) + 1, step))
        ys = list(range(0, max(height - side, 0) + 1, step))
        if xs[-1] + side < width:
            xs.append(width - side)
        if ys[-1] + side < height:
            ys.append(height - side)
        levels.append([(x, y, min(x + side, width), min(y + side, height)) for y in ys for x in xs])
    return levels


def _margin_in_tile(bbox, tile: Region, width: int, height: int) -> float:
    """Distance from the box to the nearest tile edge that is not an image edge (negative: crosses it)."""
    x0, y0, x1, y1 = bbox
    tx0, ty0, tx1, ty1 = tile
    margins = [np.inf]
    if tx0 > 0:
        margins.append(x0 - tx0)
    if ty0 > 0:
        margins.append(y0 - ty0)
    if tx1 < width:
        margins.append(tx1 - x1)
    if ty1 < height:
        margins.append(ty1 - y1)
    return float(min(margins))


def _overlap(a, b) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / max(smaller, 1e-9)


def _by_area(faces: list[DetectedFace]) -> list[DetectedFace]:
    return sorted(faces, key=lambda f: f.area, reverse=True)


def _missing_runs(found: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of False."""
    padded = np.concatenate([[True], found, [True]])
    change = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(change[::2].tolist(), change[1::2].tolist()))


def _check_index(face_index: int | None) -> int:
    index = 0 if face_index is None else int(face_index)
    if index < 0:
        raise InputError(f"face index must be 0 or more (0 is the largest face), got {face_index}")
    return index


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"{name}: expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape} "
                         f"(mimaface.media.load_image converts other images)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{name}: the image is empty")
    return np.ascontiguousarray(image)
