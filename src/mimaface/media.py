"""Image and video input/output for the whole project.

* Every frame or image this module returns is RGB ``uint8`` with shape ``(H, W, 3)``.
* Images are read with Pillow (EXIF orientation applied), falling back on imageio for formats
  Pillow does not know. Grey images are expanded to RGB, 16-bit and float images are scaled
  to 8 bits, and an alpha channel is **composited on white** (a cut-out portrait becomes a
  face on a plain background rather than on whatever colour hides under the transparent pixels).
* Videos go through the ffmpeg binary that ships with ``imageio-ffmpeg``, for reading
  (``imageio_ffmpeg.read_frames``: streaming, frames decoded one at a time, each decoded frame
  returned once even in variable-frame-rate files, rotation metadata applied) and for writing
  (H.264 / yuv420p through libx264, run here directly so that ffmpeg's exit status is checked).
  PyAV is not used.
* yuv420p needs even frame sizes: an odd width or height is **padded** by one column or row on the
  right or bottom, copying the edge pixels. Nothing is resized, so pixel coordinates in the video
  are the same as in the frames given.
* Writes are atomic: the data goes to a hidden temporary file in the destination folder that is
  renamed (``os.replace``) over the final name only when complete, and deleted on any error.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from mimaface.errors import InputError, one_line
from mimaface.files import atomic_output, create_temp, replace_file
from mimaface.limits import check_count, limits

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".3gp", ".ts", ".mts", ".gif"})
"""Read as videos. GIF is included: an animated GIF is a clip, and a still one reads as one frame."""

VIDEO_OUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
IMAGE_OUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}

DEFAULT_FPS = 25.0  # used when a video file does not state its frame rate
#: libx264 preset: "veryfast" keeps up with the warp engine at 512 px (29 frames/s with it, 23 with
#: "medium", on 2 cores); at CRF 18 the difference is file size, not visible quality.
VIDEO_PRESET = "veryfast"


# --------------------------------------------------------------------------------------- images


def load_image(path_or_array, *, name: str | None = None) -> np.ndarray:
    """Read an image file (or convert an array / PIL image) to RGB ``uint8`` ``(H, W, 3)``.

    More than ``limits().image_pixels`` pixels is refused from the file's header, before anything is
    decoded. An animated image (GIF, APNG, WebP) gives its first frame, with a warning; the other
    frames are never decoded. ``name``: what errors call it (default: the path, or "image array")."""
    if isinstance(path_or_array, np.ndarray):
        name = name or "image array"
        if path_or_array.ndim >= 2:
            check_image_pixels(path_or_array.shape[1], path_or_array.shape[0], name)
        return to_rgb8(path_or_array, name)
    if hasattr(path_or_array, "mode") and hasattr(path_or_array, "size"):  # a PIL image
        check_image_pixels(*path_or_array.size, name or "image")
        return _pil_to_rgb8(path_or_array, name or "image")
    path = existing_file(path_or_array)
    name = name or str(path)
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = limits().image_pixels
    # Pillow's own guard, checked on the header inside Image.open, is set to the project's limit (for
    # every Pillow user in the process); above it, its warning is an error here, like its error.
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if getattr(im, "is_animated", False):
                warnings.warn(f"{name}: an animated image; only its first frame is read", stacklevel=2)
            im.load()  # the first frame only
            im = ImageOps.exif_transpose(im)
            return _pil_to_rgb8(im, name)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))  # Pillow: "Image size (N pixels) exceeds limit of ..."
        if pixels is not None:
            check_count(int(pixels.group(1)), limit, "pixels", where=name, name="image_pixels")
        raise InputError(f"{name}: {one_line(err)}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        pil_error = err
    try:  # formats Pillow does not read (e.g. 16-bit RGB TIFF), by tifffile alone: imageio's other
        import imageio.v3 as iio  # plugins would hand the path to ffmpeg or fetch it as a URL

        height, width = iio.improps(path, index=0, plugin="tifffile").shape[:2]
        check_image_pixels(width, height, name)
        return to_rgb8(np.asarray(iio.imread(path, index=0, plugin="tifffile")), name)
    except InputError:
        raise
    except Exception:
        video = path.suffix.lower() in VIDEO_EXTENSIONS - {".gif"}
        kind = "a video, not an image" if video else "not a readable image"
        raise InputError(f"{name}: {kind} ({one_line(pil_error)})") from pil_error


def check_image_pixels(width: int, height: int, name: str) -> None:
    """Refuse an image of more than ``limits().image_pixels`` pixels: one InputError line naming it."""
    check_count(int(width) * int(height), limits().image_pixels, f"pixels ({width}x{height})", where=name,
                name="image_pixels")


def to_rgb8(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert a grey ``(H, W)`` / ``(H, W, 1)``, grey+alpha, RGB or RGBA array of uint8, uint16,
    bool, integer or float (0..1) values to RGB ``uint8``. Alpha is composited on white."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise InputError(f"{name}: unsupported image shape {a.shape} (expected H x W, H x W x 3 or H x W x 4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name}: the image is empty ({a.shape[1]}x{a.shape[0]} pixels)")
    a = _to_unit_or_uint8(a, name)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] in (2, 4):  # grey+alpha or RGBA: composite on white
        if a.dtype == np.uint8:
            a = a.astype(np.float32) / 255.0
        alpha = a[:, :, -1:]
        a = a[:, :, :-1] * alpha + (1.0 - alpha)
    if a.dtype != np.uint8:
        a = np.rint(a * 255.0).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def _to_unit_or_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """uint8 stays uint8; everything else becomes float32 in [0, 1]."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype.kind in "iu":
        top = int(a.max()) if a.size else 0
        if int(a.min()) < 0:
            raise InputError(f"{name}: negative pixel values")
        return a.astype(np.float32) / (255.0 if top <= 255 else 65535.0)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError(f"{name}: the image contains NaN or infinite values")
        return np.clip(a.astype(np.float32), 0.0, 1.0)
    raise InputError(f"{name}: unsupported pixel type {a.dtype}")


def _pil_to_rgb8(im, name: str) -> np.ndarray:
    if im.width == 0 or im.height == 0:
        raise InputError(f"{name}: the image is empty ({im.width}x{im.height} pixels)")
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im)
        if mode == "I" and (a.max() if a.size else 0) <= 255:
            a = a.astype(np.uint8)
        else:
            a = a.astype(np.uint16) if mode != "I" else np.clip(a, 0, 65535).astype(np.uint16)
        return to_rgb8(a, name)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        return to_rgb8(a if a.max() <= 1.0 else a / 255.0, name)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return to_rgb8(np.asarray(im.convert("RGBA")), name)
    return to_rgb8(np.asarray(im.convert("RGB")), name)


def write_image(path: str | os.PathLike, image: np.ndarray, *, finish: Callable[[Path], None] | None = None) -> None:
    """Write an image atomically; the format follows the extension (.png, .jpg, .jpeg).

    PNG keeps the alpha channel of an RGBA ``uint8`` array; otherwise the image is converted as by
    :func:`to_rgb8`. JPEG is written at quality 95. ``finish``: called with the complete temporary
    file before it is renamed into place (provenance signs it there)."""
    from PIL import Image

    path = Path(path)
    fmt = IMAGE_OUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unsupported image format (use .png or .jpg)")
    arr = np.asarray(image)
    if not (fmt == "PNG" and arr.ndim == 3 and arr.shape[2] == 4 and arr.dtype == np.uint8):
        arr = to_rgb8(arr)
    try:
        with atomic_output(path) as tmp:
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            if finish is not None:
                finish(tmp)
    except OSError as err:
        raise InputError(f"{path}: could not write the image ({one_line(err)})") from err


# --------------------------------------------------------------------------------------- videos


def is_video_path(path: str | os.PathLike) -> bool:
    """True if the file extension is a video format (see :data:`VIDEO_EXTENSIONS`); GIF counts."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass
class VideoInfo:
    fps: float
    num_frames: int | None  # estimated from the container's duration x fps (for progress bars); None if unknown
    width: int  # of the frames as decoded, after any rotation metadata is applied
    height: int


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, approximate frame count and frame size of a video file, without decoding it.

    A frame of more than ``limits().video_pixels`` pixels, or more than ``limits().frames`` frames
    declared, is an :class:`InputError`; so for :func:`iter_video_frames` and :func:`read_video`."""
    path = existing_file(path)
    reader, info = _open_video(path)
    reader.close()
    return info


def iter_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of a video as RGB ``uint8`` arrays, one at a time.

    An unreadable file raises :class:`InputError` at once; a video with no frames, one that breaks
    off mid-way, or one with more frames than ``limits().frames`` (whatever its header said) raises it
    from the iteration (naming the frame). A file that ends before the frames it declares (cut off)
    gives what it has, with a warning."""
    path = existing_file(path)
    reader, info = _open_video(path)
    return _frames(reader, info, path)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """All frames as one ``(T, H, W, 3)`` uint8 array, and the frame rate."""
    path = existing_file(path)
    reader, info = _open_video(path)
    frames = list(_frames(reader, info, path))
    return np.stack(frames), info.fps


class _RotationNotice(logging.Filter):
    """imageio-ffmpeg warns whenever rotation metadata makes the decoded size differ from the stored one;
    that is the intended result here (frames come upright), not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is different from the source frame size" not in record.getMessage()


def _open_video(path: Path):
    import imageio_ffmpeg

    ffmpeg_logger = logging.getLogger("imageio_ffmpeg")
    if not any(isinstance(f, _RotationNotice) for f in ffmpeg_logger.filters):
        ffmpeg_logger.addFilter(_RotationNotice())
    lim = limits()
    # passthrough: every decoded frame exactly once (by default ffmpeg would duplicate or drop frames
    # of variable-rate videos and GIFs to fit a constant rate, e.g. 10 copies of a still GIF).
    # -max_pixels: the decoder itself refuses a larger frame (even one a stream switches to mid-way).
    reader = imageio_ffmpeg.read_frames(ffmpeg_file(path), pix_fmt="rgb24", output_params=["-fps_mode", "passthrough"],
                                        input_params=["-nostdin", *LOCAL_PROTOCOLS, "-max_pixels",
                                                      str(lim.video_pixels)])
    try:
        meta = next(reader)
    except Exception as err:  # ffmpeg could not open it, found no video stream in it, or refused its size
        reader.close()
        size = re.search(r"Picture size (\d+)x(\d+) exceeds specified max pixel count", str(err))
        if size is not None:
            _check_frame_size(path, int(size.group(1)), int(size.group(2)))
        raise InputError(f"{path}: not a readable video ({_ffmpeg_reason(err)})") from err
    width, height = meta["size"]
    stated_fps = float(meta.get("fps") or 0.0)
    fps = stated_fps if stated_fps > 0 else DEFAULT_FPS
    duration = float(meta.get("duration") or 0.0)
    num_frames = max(1, round(duration * fps)) if duration > 0 else None
    try:
        _check_frame_size(path, width, height)
        if num_frames is not None:
            check_count(num_frames, lim.frames, f"frames ({duration:g} s at {fps:g} fps)", where=str(path),
                        name="frames")
    except InputError:
        reader.close()
        raise
    if stated_fps <= 0:
        warnings.warn(f"{path}: the video does not state its frame rate; assuming {DEFAULT_FPS:g} fps", stacklevel=3)
    return reader, VideoInfo(fps=fps, num_frames=num_frames, width=int(width), height=int(height))


def _check_frame_size(path: Path, width: int, height: int) -> None:
    check_count(width * height, limits().video_pixels, f"pixels per frame ({width}x{height})", where=str(path),
                name="video_pixels")


def _frames(reader, info: VideoInfo, path: Path) -> Iterator[np.ndarray]:
    limit = limits().frames
    count = 0
    try:
        while True:
            try:
                data = next(reader)
            except StopIteration:
                break
            except Exception as err:
                raise InputError(f"{path}: could not decode frame {count} ({_ffmpeg_reason(err)})") from err
            count += 1
            check_count(count, limit, "frames read", where=str(path), name="frames")  # a header may say fewer
            yield np.frombuffer(data, np.uint8).reshape(info.height, info.width, 3).copy()
    finally:
        reader.close()  # stops ffmpeg when the consumer stops early
    if count == 0:
        raise InputError(f"{path}: the video has no frames")
    if info.num_frames is not None and count < info.num_frames:
        # Fewer frames than duration x rate is also what a variable frame rate gives; a cut-off file is
        # one whose packets ffmpeg cannot all read.
        damage = _demux_error(path)
        if damage:
            warnings.warn(f"{path}: decoded {count} of the {info.num_frames} frames the file declares; it may be "
                          f"truncated ({damage})", stacklevel=2)


def _demux_error(path: Path) -> str | None:
    """What ffmpeg says is wrong reading every packet of the video stream without decoding it, None if
    nothing: the demuxer's complaint when it has one (e.g. "partial file" for an MP4 cut short, "File
    ended prematurely" for Matroska), else the first."""
    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", *ffmpeg_input(path),
                             "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
                            check=False, capture_output=True, text=True, errors="replace")
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    if not lines:
        return None
    line = next((line for line in lines if line.startswith("[in#")), lines[0])  # "[in#0/mov,mp4,... @ 0x..] ..."
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", line)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, *,
                crf: int = 18, preset: str = VIDEO_PRESET, audio_from: str | os.PathLike | None = None,
                finish: Callable[[Path], None] | None = None) -> int:
    """Encode ``frames`` (any iterable of images accepted by :func:`to_rgb8`, all of one size; a
    generator is consumed once) with a :class:`VideoWriter`. Returns the number of frames written."""
    with VideoWriter(path, fps, crf=crf, preset=preset, audio_from=audio_from, finish=finish) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames_written


class VideoWriter:
    """An H.264 (libx264, yuv420p) MP4 (or .m4v/.mov) written frame by frame, atomically.

    Frames go to ffmpeg as they come (memory does not grow with the video); the file appears under
    ``path`` only when the ``with`` block ends without an error, and nothing is left otherwise.
    ``crf``: libx264 constant rate factor, 0 (lossless) to 51 (worst); 18 is visually near-lossless.
    Odd sizes are padded to even (see the module notes). ``audio_from``: a media file whose audio
    track (if it has one) is muxed in as AAC, padded with silence or cut to the video's exact
    length, so N frames written are N frames in the file.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 18, preset: str = VIDEO_PRESET,
                 audio_from: str | os.PathLike | None = None, finish: Callable[[Path], None] | None = None) -> None:
        self.path = Path(path)
        self.container = VIDEO_OUT_FORMATS.get(self.path.suffix.lower())
        if self.container is None:
            raise InputError(f"{self.path}: unsupported video format (use .mp4)")
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {crf}")
        self.fps, self.crf, self.preset = float(fps), crf, preset
        self.audio = None if audio_from is None else existing_file(audio_from)
        self.finish = finish  # called with the complete temporary file before the rename (provenance signs it)
        self.frames_written = 0
        self._shape: tuple[int, ...] | None = None
        self._process: subprocess.Popen | None = None
        self._log = None
        self._tmp: Path | None = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one frame (the first one fixes the size)."""
        frame = to_rgb8(frame, f"{self.path}: frame {self.frames_written}")
        if self._process is None:
            self._start(frame.shape)
        elif frame.shape != self._shape:
            raise ValueError(f"{self.path}: frame {self.frames_written} is {frame.shape[1]}x{frame.shape[0]}, "
                             f"frame 0 is {self._shape[1]}x{self._shape[0]}; all frames must have one size")
        height, width = frame.shape[:2]
        if width % 2 or height % 2:
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._finish_encoder()  # ffmpeg quit: its log says why
            raise InputError(f"{self.path}: could not write the video (ffmpeg stopped)") from None
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file: flush the encoder, mux the audio, rename into place."""
        if self._process is None:
            raise ValueError(f"{self.path}: no frames to write")
        try:
            self._finish_encoder()
            if self.audio is not None and has_audio(self.audio):
                self._mux_audio()
            if self.finish is not None:
                self.finish(self._tmp)
            replace_file(self._tmp, self.path)
            self._log.close()
        except BaseException:
            self._abort()
            raise

    def _start(self, shape: tuple[int, ...]) -> None:
        import imageio_ffmpeg

        self._shape = shape
        height, width = shape[:2]
        self._tmp = create_temp(self.path)
        rate = Fraction(self.fps).limit_denominator(1001)
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width + width % 2}x{height + height % 2}",
               "-r", str(rate), "-i", "-", "-an", "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
               "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", self.container, ffmpeg_file(self._tmp)]
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)

    def _finish_encoder(self) -> None:
        process = self._process
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
        returncode = process.wait()
        if returncode != 0:
            self._log.seek(0)
            reason = one_line(self._log.read().decode("utf-8", "replace")) or f"ffmpeg exit status {returncode}"
            raise InputError(f"{self.path}: could not write the video ({reason})")

    def _mux_audio(self) -> None:
        """Copy the video and add the audio, padded (apad) or cut (-t) to exactly the video's duration."""
        import imageio_ffmpeg

        duration = Fraction(self.frames_written) / Fraction(self.fps).limit_denominator(1001)
        muxed = create_temp(self.path)
        try:
            # "1:a:0?": the audio track when there is one.
            cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error", *ffmpeg_input(self._tmp),
                   *ffmpeg_input(self.audio), "-map", "0:v:0", "-map", "1:a:0?", "-c:v", "copy", "-c:a", "aac",
                   "-af", "apad", "-t", f"{float(duration):.6f}", "-movflags", "+faststart", "-f", self.container,
                   ffmpeg_file(muxed)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise InputError(f"{self.path}: could not add the audio of {self.audio} "
                                 f"({one_line(result.stderr) or f'ffmpeg exit status {result.returncode}'})")
            os.replace(muxed, self._tmp)
        except BaseException:
            muxed.unlink(missing_ok=True)
            raise

    def _abort(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if process is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------- helpers


def has_audio(path: str | os.PathLike) -> bool:
    """Whether a media file has an audio stream."""
    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin",
                             *ffmpeg_input(existing_file(path))], capture_output=True, text=True)
    return any("Audio:" in line for line in result.stderr.splitlines() if "Stream #" in line)


#: Before an ffmpeg input: it may open local files and its own pipes, nothing else; this holds for what
#: the input names inside itself too (a playlist's entries, a reference in a MOV).
LOCAL_PROTOCOLS = ("-protocol_whitelist", "file,pipe")


def ffmpeg_file(path: str | os.PathLike) -> str:
    """``path`` as ffmpeg must be given it: ``file:`` and the absolute path, so that a file named
    ``http:example.com.mp4`` or ``tcp:127.0.0.1:9.mp4`` is read as the local file it is, never as a URL."""
    return "file:" + os.path.abspath(path)


def ffmpeg_input(path: str | os.PathLike) -> list[str]:
    """The ffmpeg arguments that read ``path``, a local file, and nothing but local files:
    ``-protocol_whitelist file,pipe -i file:/absolute/path``. Every ffmpeg input in the project goes through it
    (or through :data:`LOCAL_PROTOCOLS` and :func:`ffmpeg_file` where imageio-ffmpeg adds the ``-i``)."""
    return [*LOCAL_PROTOCOLS, "-i", ffmpeg_file(path)]


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...],
                      inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output file that cannot or must not be written: an unknown format (not one of ``suffixes``),
    a missing folder, a folder, or one of ``inputs`` (what each is -> its path, None: not given; another
    output too) under any name or link, so an input is never overwritten. One InputError line."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        kinds = " or ".join(filter(None, (", ".join(suffixes[:-1]), suffixes[-1])))
        raise InputError(f"{path}: unsupported output format, the output must be a {kinds} file")
    if not path.parent.is_dir():
        raise InputError(f"{path}: cannot write, folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an output file")
    for what, given in inputs.items():
        if given is not None and _same_file(path, Path(given)):
            raise InputError(f"{path}: is the {what} ({given}); writing there would overwrite it, so choose "
                             "another output file")


def _same_file(a: Path, b: Path) -> bool:
    """The same file under any name or link when both exist; else the same resolved path (two outputs)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return not a.exists() and not b.exists() and a.resolve() == b.resolve()
    except (OSError, ValueError):  # a name too long to be a file (a transcript given as text), a NUL
        return False


def is_existing_path(text: str | os.PathLike) -> bool:
    """Whether ``text`` names something that exists (False for a name too long to be a file, such as a
    transcript given as text)."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):  # ENAMETOOLONG; a NUL character
        return False


def existing_file(path) -> Path:
    """``path`` as a Path if it is a non-empty file, else an InputError naming it."""
    try:
        path = Path(path)
    except TypeError:
        raise InputError(f"expected a file path, got {type(path).__name__}") from None
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    return path


def _ffmpeg_reason(err: Exception) -> str:
    """The most telling line of an imageio-ffmpeg error (ffmpeg's own complaint when there is one)."""
    text = str(err)
    if "does not contain any stream" in text or isinstance(err, IndexError):
        return "it contains no video stream"
    if "=== stderr ===" in text:
        stderr = text.split("=== stderr ===", 1)[1]
        lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith(" ")]
        for line in reversed(lines):
            if not line.lower().startswith(("ffmpeg version", "built with", "configuration", "lib", "...")):
                return line
    return one_line(text) or type(err).__name__
