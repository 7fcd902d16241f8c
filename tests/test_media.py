import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from mimaface.errors import InputError
from mimaface.media import (
    is_video_path,
    iter_video_frames,
    load_image,
    probe_video,
    read_video,
    to_rgb8,
    write_image,
    write_video,
)


def moving_frames(count=12, width=64, height=48):
    """Smooth gradients that move, so H.264 keeps them close."""
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(count):
        r = 128 + 100 * np.sin((x + 3 * t) / 9.0)
        g = 128 + 100 * np.cos((y - 2 * t) / 7.0)
        b = np.full_like(r, 40.0 + 10 * t)
        frames.append(np.stack([r, g, b], -1).round().astype(np.uint8))
    return frames


def zero_frame_mp4(path):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=s=64x48:r=25", "-frames:v", "0", "-c:v", "libx264", str(path)], check=True)
    assert path.stat().st_size > 0


# ------------------------------------------------------------------------------------------ images


def test_arrays_of_every_kind_become_rgb8():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for array in (grey, grey[:, :, None]):
        out = load_image(array)
        assert out.shape == (3, 4, 3) and out.dtype == np.uint8
        assert (out == grey[:, :, None]).all()
    assert (load_image(grey.astype(np.uint16) * 257) == grey[:, :, None]).all()
    assert (load_image(np.full((2, 2, 3), 0.5)) == 128).all()
    assert (load_image(np.ones((2, 2), bool)) == 255).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3] = 255  # top row opaque red, bottom row transparent
    out = load_image(rgba)
    assert out[0].tolist() == [[200, 0, 0]] * 2
    assert out[1].tolist() == [[255, 255, 255]] * 2  # composited on white
    half = to_rgb8(np.array([[[0, 128]]], np.uint8))  # grey + alpha: black at half opacity
    assert abs(int(half[0, 0, 0]) - 127) <= 1


def test_image_files(tmp_path):
    grey = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(30, 40)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert (load_image(tmp_path / "grey.png") == grey[:, :, None]).all()

    deep = (np.arange(40 * 30, dtype=np.uint16) * 50).reshape(30, 40)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as stored:
        assert stored.mode.startswith("I")  # really 16 bits
    out = load_image(str(tmp_path / "deep.png"))
    assert np.abs(out[..., 0].astype(int) - np.rint(deep / 257.0)).max() <= 1

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[:5, :, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    out = load_image(tmp_path / "cutout.png")
    assert (out[:5] == [0, 0, 255]).all() and (out[5:] == 255).all()
    Image.fromarray(rgba[..., [2, 3]]).convert("LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert (out[:5] == 255).all() and (out[5:] == 255).all() and out.shape == (10, 10, 3)


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    Image.fromarray(image).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "phone.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # the white half is now on top


def test_bad_image_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("this is not a picture")
    with pytest.raises(InputError, match="text.png"):
        load_image(tmp_path / "text.png")
    with pytest.raises(InputError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(InputError, match="not a file"):
        load_image(tmp_path)


def test_write_image_round_trip_and_atomicity(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    assert (load_image(tmp_path / "a.png") == image).all()
    smooth = moving_frames(1)[0]
    write_image(tmp_path / "b.jpg", smooth)
    assert np.abs(load_image(tmp_path / "b.jpg").astype(int) - smooth).mean() < 3
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.jpg"]  # no temporary files left
    with pytest.raises(InputError, match="format"):
        write_image(tmp_path / "c.gifx", image)
    with pytest.raises(InputError, match="does not exist"):
        write_image(tmp_path / "nope" / "c.png", image)
    with pytest.raises(InputError):
        write_image(tmp_path / "d.png", np.zeros((4, 4, 7), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.jpg"]


# ------------------------------------------------------------------------------------------ videos


def test_is_video_path():
    assert is_video_path("a/b/clip.MP4") and is_video_path("x.mov") and is_video_path("x.webm")
    assert is_video_path("anim.gif")
    assert not is_video_path("photo.jpg") and not is_video_path("motion.npz") and not is_video_path("mp4")


def test_video_round_trip(tmp_path):
    frames = moving_frames()
    path = tmp_path / "clip.mp4"
    write_video(path, iter(frames), 29.97)
    assert os.listdir(tmp_path) == ["clip.mp4"]
    info = probe_video(path)
    assert (info.width, info.height) == (64, 48)
    assert abs(info.fps - 29.97) < 0.01
    assert info.num_frames is not None and abs(info.num_frames - len(frames)) <= 1
    video, fps = read_video(path)
    assert video.shape == (len(frames), 48, 64, 3) and video.dtype == np.uint8
    assert abs(fps - 29.97) < 0.01
    error = np.abs(video.astype(int) - np.stack(frames))  # H.264 is lossy, yuv420p halves colour resolution
    assert error.mean() < 5 and np.percentile(error, 99) < 20
    assert np.abs(video.astype(int) - np.stack(frames)[:, ::-1]).mean() > 20  # (the tolerance detects a flip)
    # frames come in order: the blue channel increases by 10 per frame
    assert np.all(np.diff(video[..., 2].mean((1, 2))) > 5)
    streamed = iter_video_frames(path)
    first = next(streamed)
    assert (first == video[0]).all()
    first[0, 0] = 0  # frames are writable copies
    streamed.close()


def test_odd_sizes_are_padded_not_resized(tmp_path):
    frames = [f[:47, :63] for f in moving_frames(4)]
    write_video(tmp_path / "odd.mp4", frames, 25)
    video, fps = read_video(tmp_path / "odd.mp4")
    assert video.shape == (4, 48, 64, 3) and fps == pytest.approx(25.0, abs=0.01)
    assert np.abs(video[:, :47, :63].astype(int) - np.stack(frames)).mean() < 5
    # the added column and row repeat the edge pixels
    assert np.abs(video[:, :47, 63].astype(int) - video[:, :47, 62]).mean() < 4
    assert np.abs(video[:, 47, :63].astype(int) - video[:, 46, :63]).mean() < 4


def test_failed_video_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.mp4"

    def broken():
        yield from moving_frames(3)
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(path, broken(), 25)
    assert os.listdir(tmp_path) == []

    frames = moving_frames(3)
    write_video(path, frames, 25)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="frame 2"):  # frames of different sizes
        write_video(path, frames[:2] + [frames[2][:20]], 25)
    assert path.read_bytes() == before  # an existing file is untouched by a failed write
    assert os.listdir(tmp_path) == ["out.mp4"]
    with pytest.raises(ValueError):
        write_video(tmp_path / "none.mp4", [], 25)
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_video_write_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_video(tmp_path / "missing" / "x.mp4", moving_frames(2), 25)
    with pytest.raises(InputError, match="format"):
        write_video(tmp_path / "x.avi", moving_frames(2), 25)
    assert os.listdir(tmp_path) == []


def test_unreadable_and_empty_videos(tmp_path):
    (tmp_path / "text.mp4").write_text("not a video, just text\n" * 20)
    (tmp_path / "empty.mp4").write_bytes(b"")
    zero_frame_mp4(tmp_path / "noframes.mp4")
    for name in ("text.mp4", "empty.mp4", "noframes.mp4", "missing.mp4"):
        path = tmp_path / name
        with pytest.raises(InputError, match=name):
            probe_video(path)
        with pytest.raises(InputError, match=name):
            list(iter_video_frames(path))
        with pytest.raises(InputError, match=name):
            read_video(path)


def test_rotation_metadata_is_applied(tmp_path):
    import imageio_ffmpeg

    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32] = 255  # left half white
    write_video(tmp_path / "plain.mp4", [frame] * 3, 25)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i",
                    str(tmp_path / "plain.mp4"), "-c", "copy", str(tmp_path / "phone.mp4")], check=True)
    info = probe_video(tmp_path / "phone.mp4")
    assert (info.width, info.height) == (48, 64)
    video, _ = read_video(tmp_path / "phone.mp4")
    assert video.shape == (3, 64, 48, 3)
    assert video[:, 40:].mean() > 200 and video[:, :24].mean() < 50  # turned a quarter: white at the bottom


def test_each_frame_is_read_once(tmp_path):
    """ffmpeg would pad a still GIF (no frame rate) out to 10 frames at its 100 fps time base."""
    Image.fromarray(np.full((20, 30, 3), 77, np.uint8)).save(tmp_path / "still.gif")
    with pytest.warns(UserWarning, match="frame rate"):
        video, fps = read_video(tmp_path / "still.gif")
    assert video.shape == (1, 20, 30, 3) and fps == 25.0
    frames = [np.full((20, 30, 3), v, np.uint8) for v in (0, 120, 240)]
    Image.fromarray(frames[0]).save(tmp_path / "anim.gif", save_all=True, duration=[100, 300, 100],
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    video, _ = read_video(tmp_path / "anim.gif")  # frames of different durations
    assert len(video) == 3 and np.allclose(video[:, 0, 0, 0], [0, 120, 240], atol=3)


def _audio_duration(path) -> float:
    """Seconds of decoded audio (8 kHz mono 16-bit samples counted)."""
    import imageio_ffmpeg

    pcm = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-ac", "1",
                          "-ar", "8000", "-f", "s16le", "-"], check=True, capture_output=True).stdout
    return len(pcm) / 2 / 8000


@pytest.mark.parametrize("audio_seconds", [1.57, 2.5])
def test_muxed_audio_is_padded_or_cut_to_the_frames(tmp_path, audio_seconds):
    """N frames in, N frames out, whatever the audio's length (a 1.57 s track under 1.60 s of video
    used to cost the last frame)."""
    import imageio_ffmpeg

    audio = tmp_path / "voice.m4a"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency=220:duration={audio_seconds}", "-c:a", "aac", str(audio)], check=True)
    out = tmp_path / "out.mp4"
    assert write_video(out, moving_frames(40), 25, audio_from=audio) == 40
    assert probe_video(out).num_frames == 40
    assert abs(_audio_duration(out) - 1.6) < 0.05  # padded with silence or cut at the video's end
    assert sorted(os.listdir(tmp_path)) == ["out.mp4", "voice.m4a"]
