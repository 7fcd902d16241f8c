"""Untrusted images and videos: sizes refused from the header before anything is decoded, animated images
and cut-off videos read as far as they go with a one-line warning, and ffmpeg never opening anything but a
local file, whatever the file is called."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import threading
import warnings
import zlib
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageFile

from mimaface.audio.speech import probe_audio, read_pcm
from mimaface.errors import InputError
from mimaface.media import (
    VideoWriter,
    ffmpeg_file,
    ffmpeg_input,
    has_audio,
    iter_video_frames,
    load_image,
    probe_video,
    read_video,
    write_video,
)
from mimaface.pipelines.source import prepare_source

SRC = Path(__file__).resolve().parents[1] / "src" / "mimaface"


def moving_frames(count: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """Frames that differ from one another (so each can be recognised after H.264)."""
    y, x = np.mgrid[0:height, 0:width]
    return [np.stack([128 + 100 * np.sin((x + 3 * t) / 9.0), 128 + 100 * np.cos((y - 2 * t) / 7.0),
                      np.full(x.shape, 20.0 + 8 * t)], -1).round().astype(np.uint8) for t in range(count)]


def nearest(decoded: np.ndarray, frames: list[np.ndarray]) -> list[int]:
    """For each decoded frame, the index of the written frame it is closest to."""
    written = np.stack(frames).astype(np.int16)
    return [int(np.abs(written - frame.astype(np.int16)).mean(axis=(1, 2, 3)).argmin()) for frame in decoded]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds almost none of them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("side", [30000, 8000])  # 900 Mpx: Pillow's own error range; 64 Mpx: its warning range
def test_a_png_declaring_too_many_pixels_is_refused_from_its_header(tmp_path, side):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(side, side))
    assert bomb.stat().st_size < 110
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning on the way either
        with pytest.raises(InputError) as error:
            load_image(bomb)
    message = one_line(error)
    assert message == (f"{bomb}: {side * side} pixels is more than the limit of 50000000 "
                       "(set MIMAFACE_MAX_IMAGE_PIXELS to allow more)")


def test_the_image_pixel_limit_follows_its_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(path)
    monkeypatch.setenv("MIMAFACE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(InputError, match=r"1200 pixels .*limit of 1000 .*MIMAFACE_MAX_IMAGE_PIXELS"):
        load_image(path)
    with pytest.raises(InputError, match="limit of 1000"):  # arrays and PIL images too
        load_image(np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(InputError, match="limit of 1000"):
        load_image(Image.new("RGB", (40, 30)))
    monkeypatch.setenv("MIMAFACE_MAX_IMAGE_PIXELS", "1200")
    assert load_image(path).shape == (30, 40, 3)
    # what Pillow does not read goes to tifffile, checked the same way before its pixels are read
    import tifffile
    tifffile.imwrite(tmp_path / "float.tif", np.full((30, 50, 3), 0.5, np.float32), photometric="rgb")
    with pytest.raises(InputError, match=r"1500 pixels \(50x30\)"):
        load_image(tmp_path / "float.tif")
    monkeypatch.delenv("MIMAFACE_MAX_IMAGE_PIXELS")
    assert np.abs(load_image(tmp_path / "float.tif").astype(int) - 128).max() <= 1


@pytest.mark.parametrize("fmt", ["gif", "png", "webp"])
def test_an_animated_image_gives_its_first_frame_with_a_warning(tmp_path, fmt, monkeypatch):
    frames = [np.full((20, 30, 3), value, np.uint8) for value in (40, 120, 240)]
    path = tmp_path / f"anim.{fmt}"
    options = {"lossless": True} if fmt == "webp" else {}
    Image.fromarray(frames[0]).save(path, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]],
                                    duration=100, **options)
    with Image.open(path) as stored:
        assert stored.n_frames == 3
    decoded = []  # which frames Pillow decodes
    load = ImageFile.ImageFile.load

    def spy(image):
        decoded.append(image.tell())
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.warns(UserWarning, match=rf"anim\.{fmt}: an animated image; only its first frame is read"):
        image = load_image(path)
    assert image.shape == (20, 30, 3) and np.abs(image.astype(int) - 40).max() <= 2
    assert set(decoded) == {0}


def test_bad_image_arrays_are_one_line_errors():
    nan = np.full((8, 8, 3), 0.5, np.float32)
    nan[2, 3, 1] = np.nan
    for bad, message in ((nan, "NaN"), (np.zeros((0, 8, 3), np.uint8), "empty"),
                         (np.zeros((8, 8, 5), np.uint8), "shape"), (np.zeros(8, np.uint8), "shape"),
                         (np.array([["a"]]), "pixel type")):
        with pytest.raises(InputError, match=message) as error:
            prepare_source(bad, 64, name="photo")
        assert one_line(error).startswith("photo:")
    with pytest.raises(InputError, match="expected an image array"):
        prepare_source(None, 64)


def test_prepare_source_refuses_sizes_out_of_range(monkeypatch):
    photo = np.zeros((64, 64, 3), np.uint8)  # never reached: the arguments are checked first
    for size in (0, 12, 10**6, 64.5):
        with pytest.raises(InputError, match="crop size must be a whole number from 24 to 4096"):
            prepare_source(photo, size)
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="crop_scale must be a finite number above 0"):
            prepare_source(photo, 64, crop_scale=scale)
    monkeypatch.setenv("MIMAFACE_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(InputError, match="limit of 100"):
        prepare_source(photo, 64)


def test_a_crop_far_larger_than_the_photo_is_refused_before_it_is_made():
    from mimaface.demo import asset_path

    photo = load_image(asset_path("portrait.jpg"))
    with pytest.raises(InputError, match=r"the crop \(crop_scale 10000\): \d+ pixels .*limit of 50000000"):
        prepare_source(photo, 64, crop_scale=1e4, name="portrait")


# ------------------------------------------------------------------------------------------ videos


def test_video_frame_size_and_declared_frame_count_limits(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_video(path, moving_frames(12), 25)
    monkeypatch.setenv("MIMAFACE_MAX_VIDEO_PIXELS", "3000")  # the frames are 64 x 48 = 3072
    for read in (probe_video, read_video, lambda p: next(iter_video_frames(p))):
        with pytest.raises(InputError) as error:
            read(path)
        assert one_line(error) == (f"{path}: 3072 pixels per frame (64x48) is more than the limit of 3000 "
                                   "(set MIMAFACE_MAX_VIDEO_PIXELS to allow more)")
    monkeypatch.delenv("MIMAFACE_MAX_VIDEO_PIXELS")
    monkeypatch.setenv("MIMAFACE_MAX_FRAMES", "10")
    for read in (probe_video, read_video, lambda p: next(iter_video_frames(p))):
        with pytest.raises(InputError) as error:
            read(path)
        assert one_line(error) == (f"{path}: 12 frames (0.48 s at 25 fps) is more than the limit of 10 "
                                   "(set MIMAFACE_MAX_FRAMES to allow more)")
    monkeypatch.setenv("MIMAFACE_MAX_FRAMES", "12")
    assert read_video(path)[0].shape == (12, 48, 64, 3)


def test_the_frame_limit_holds_when_the_header_states_no_duration(tmp_path, monkeypatch):
    raw = tmp_path / "clip.h264"  # a bare H.264 stream: no container, no duration
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=s=64x48:r=25:d=1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "h264",
                    ffmpeg_file(raw)], check=True)
    assert probe_video(raw).num_frames is None
    monkeypatch.setenv("MIMAFACE_MAX_FRAMES", "10")
    frames = iter_video_frames(raw)
    got = [next(frames) for _ in range(10)]  # the limit's worth comes, then the error
    with pytest.raises(InputError, match=r"clip\.h264: 11 frames read is more than the limit of 10"):
        next(frames)
    assert len(got) == 10
    monkeypatch.delenv("MIMAFACE_MAX_FRAMES")
    assert len(read_video(raw)[0]) == 25


def test_a_truncated_video_gives_its_frames_and_a_warning(tmp_path):
    full = tmp_path / "full.mp4"
    frames = moving_frames(50)
    write_video(full, frames, 25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a whole file: no warning
        video, _ = read_video(full)
    assert len(video) == 50
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning) as caught:
        video, _ = read_video(cut)
    n = len(video)
    # the frames there are, in order (the last may be only partly there: ffmpeg conceals the rest)
    assert 1 < n < 50 and nearest(video[:-1], frames) == list(range(n - 1))
    messages = [str(w.message) for w in caught if w.category is UserWarning]  # (imageio-ffmpeg leaves ResourceWarnings)
    assert len(messages) == 1 and re.fullmatch(rf"{re.escape(str(cut))}: decoded {n} of the 50 frames the file "
                                               r"declares; it may be truncated \(stream 0, offset 0x[0-9a-f]+: "
                                               r"partial file\)", messages[0]), messages


def test_a_reader_stopped_early_gives_no_truncation_warning(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, moving_frames(20), 25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames = iter_video_frames(path)
        assert next(frames).shape == (48, 64, 3)
        frames.close()


# ------------------------------------------------------------------------------------ ffmpeg and URLs


def test_ffmpeg_is_given_local_files_only(tmp_path):
    assert ffmpeg_file("tcp:127.0.0.1:9.mp4").startswith("file:/")
    assert ffmpeg_input(tmp_path / "http:x.mp4") == ["-protocol_whitelist", "file,pipe", "-i",
                                                    f"file:{tmp_path}/http:x.mp4"]
    # every ffmpeg input in the package goes through ffmpeg_input (or LOCAL_PROTOCOLS + ffmpeg_file for
    # imageio-ffmpeg's reader); the only other "-i" is the encoder's stdin
    for source in SRC.rglob("*.py"):
        text = source.read_text()
        for match in re.finditer(r'"-i",\s*([^\],]+)', text):
            assert match.group(1).strip() in ('"-"', "ffmpeg_file(path)"), f"{source}: {match.group(0)}"
        for match in re.finditer(r"read_frames\(([^,]+),", text):
            assert match.group(1).startswith("ffmpeg_file("), f"{source}: {match.group(0)}"


@pytest.fixture
def listening():
    """A TCP server on 127.0.0.1 that records every connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    connections = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connections.append(connection.getpeername())
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    stop.set()
    thread.join()
    server.close()


def test_file_names_that_look_like_urls_are_read_as_local_files(tmp_path, monkeypatch, listening):
    port, connections = listening
    monkeypatch.chdir(tmp_path)  # names relative to the working folder, as a user types them
    frames = moving_frames(8)
    write_video("http:example.com.mp4", frames, 25)
    tcp = f"tcp:127.0.0.1:{port}.mp4"
    # a video with sound, made by ffmpeg itself (given a file: path)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=s=64x48:r=25:d=0.4", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.4",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", ffmpeg_file(tcp)], check=True)
    for name in ("http:example.com.mp4", tcp):
        assert Path(name).is_file()
        info = probe_video(name)
        assert (info.width, info.height, info.num_frames) == (64, 48, 10 if name == tcp else 8)
        assert len(read_video(name)[0]) == info.num_frames == sum(1 for _ in iter_video_frames(name))
    assert nearest(read_video("http:example.com.mp4")[0], frames) == list(range(8))
    assert has_audio(tcp) and not has_audio("http:example.com.mp4")
    assert probe_audio(tcp) == pytest.approx(0.4, abs=0.05)
    assert sum(len(chunk) for chunk in read_pcm(tcp)) == pytest.approx(0.4 * 16000, rel=0.1)
    with VideoWriter(f"tcp:127.0.0.1:{port}.out.mp4", 25, audio_from=tcp) as writer:  # muxing reads it too
        for frame in frames:
            writer.write(frame)
    assert has_audio(f"tcp:127.0.0.1:{port}.out.mp4")
    assert connections == []  # no connection was ever attempted
