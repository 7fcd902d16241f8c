"""Arguments and outputs, checked before any work: the commands refuse an output that is one of their inputs,
numbers out of range and sizes beyond the limits with one line and exit 2, writing nothing, and animate does
so before the model is loaded (or the source's face looked for). Also the Python API's own checks:
MIMAFacePipeline.__call__, SamplingOptions and the warp engine's crop size."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import motion_of

from mimaface.cli import main
from mimaface.demo import asset_path
from mimaface.errors import InputError
from mimaface.media import write_image, write_video
from mimaface.pipelines import animate as animate_module
from mimaface.pipelines.engines import Engine
from mimaface.pipelines.options import SamplingOptions
from mimaface.pipelines.pipeline import MIMAFacePipeline
from mimaface.pipelines.settings import check_generation


def run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, command: str, *expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"mimaface {command}: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Loading an engine or the model, or looking for the source's face, fails the test: what the tests
    using this check must be refused before any of it."""
    def refuse(*args, **kwargs):
        raise AssertionError("work was started before the arguments were checked")

    monkeypatch.setattr(Engine, "load", classmethod(refuse))
    monkeypatch.setattr(MIMAFacePipeline, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(animate_module, "prepare_engine_source", refuse)


@pytest.fixture
def inputs(tmp_path):
    """A photo, a driving video, a motion file, each with its bytes, in a folder of their own."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    photo, video, motion = folder / "photo.jpg", folder / "drive.mp4", folder / "talk.json"
    shutil.copy(asset_path("portrait.jpg"), photo)
    shutil.copy(asset_path("talk.json"), motion)
    write_video(video, [np.full((48, 64, 3), v, np.uint8) for v in (20, 120, 220)], 25)
    files = {"photo": photo, "video": video, "motion": motion}
    return files, {name: path.read_bytes() for name, path in files.items()}


def unchanged(inputs) -> bool:
    files, contents = inputs
    return all(files[name].read_bytes() == data for name, data in contents.items())


# ------------------------------------------------------------------------ outputs that are inputs


@pytest.mark.parametrize("case", ["output_is_source", "output_is_driving", "output_is_a_link_to_the_driving",
                                  "output_is_the_audio", "side_by_side_is_source", "side_by_side_is_output"])
def test_animate_never_writes_over_an_input(capsys, tmp_path, inputs, no_work, case):
    files = inputs[0]
    source, driving, out = files["photo"], files["motion"], tmp_path / "out.mp4"
    extra = []
    if case == "output_is_source":
        out, expected = source, "is the source"
    elif case == "output_is_driving":
        driving = out = files["video"]
        expected = "is the driving"
    elif case == "output_is_a_link_to_the_driving":
        driving, out = files["video"], tmp_path / "link.mp4"
        os.link(driving, out)
        expected = "is the driving"
    elif case == "output_is_the_audio":
        out, extra, expected = files["video"], ["--audio", files["video"]], "is the audio track"
    elif case == "side_by_side_is_source":
        extra, expected = ["--side-by-side", source], "is the source"
    else:
        extra, expected = ["--side-by-side", out], "is the output"
    code, err = run(capsys, "animate", "--source", source, "--driving", driving, "-o", out, *extra, "-q")
    assert_refused(code, err, "animate", expected, "choose another output file")
    assert unchanged(inputs)
    if case in ("side_by_side_is_output", "side_by_side_is_source"):
        assert not out.exists()


def test_render_extract_and_audio2motion_never_write_over_an_input(capsys, tmp_path, inputs):
    files = inputs[0]
    code, err = run(capsys, "render", files["motion"], "-o", files["photo"].with_suffix(".png"), "-q")  # new: fine
    assert code == 0
    overlay = files["photo"].with_suffix(".png")
    before = overlay.read_bytes()
    code, err = run(capsys, "render", files["motion"], "-o", overlay, "--overlay", overlay, "-q")
    assert_refused(code, err, "render", "is the overlay")
    assert overlay.read_bytes() == before
    link = tmp_path / "photo.npz"
    link.symlink_to(files["photo"])
    code, err = run(capsys, "extract", files["photo"], "-o", link, "-q")
    assert_refused(code, err, "extract", "is the input")
    words = tmp_path / "words.json"
    words.write_text('"hello"')
    code, err = run(capsys, "audio2motion", files["video"], "--transcript", words, "-o", words, "-q")
    assert_refused(code, err, "audio2motion", "is the transcript")
    assert words.read_text() == '"hello"' and unchanged(inputs)


# -------------------------------------------------------------- animate: numbers, model, before loading


@pytest.mark.parametrize("flags, expected", [
    (["--guidance", "-5"], "--guidance must be a finite number of at least 0 (1: no guidance), got -5.0"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--steps", "0"], "--steps must be a whole number of at least 1, got 0"),
    (["--steps", "5000"], "5000 denoising steps are more than the 1000 steps of the model's noise schedule"),
    (["--seed", str(2**70)], f"--seed must be a whole number from 0 to 2**64 - 1, got {2**70}"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 2**64 - 1"),
    (["--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
    (["--clip-length", "1"], ("the ICA overlap of 1 frame(s) (as the model was trained) must be below the clip "
                              "length of 1: give a longer clip, a smaller overlap, or no ICA")),
    (["--clip-length", "2", "--overlap", "2"], "the ICA overlap of 2 frame(s) must be below the clip length of 2:"),
    (["--overlap", "6"], "the ICA overlap of 6 frame(s) must be below the clip length of 6 (as the model was trained)"),
    (["--clip-length", "64"], "a clip length of 64 frames is more than the 32 the model's motion modules know"),
    (["--fps", "-5"], "fps must be above 0"),
    (["--fps", "nan"], "fps"),
    (["--pose-scale", "inf"], "pose_multiplier must be a finite number"),
])
def test_animate_refuses_bad_numbers_before_loading_anything(capsys, tmp_path, inputs, checkpoint, no_work,
                                                             flags, expected):
    files = inputs[0]
    out = tmp_path / "out.mp4"
    code, err = run(capsys, "animate", "--source", files["photo"], "--driving", files["motion"], "-o", out,
                    "--checkpoint", checkpoint, *flags, "-q")
    assert_refused(code, err, "animate", expected)
    assert "got 1 and 1" not in err and not out.exists() and unchanged(inputs)


def test_animate_refuses_a_checkpoint_that_is_a_file(capsys, tmp_path, inputs, no_work):
    files = inputs[0]
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a folder")
    code, err = run(capsys, "animate", "--source", files["photo"], "--driving", files["motion"], "-o",
                    tmp_path / "out.mp4", "--checkpoint", weights, "-q")
    assert_refused(code, err, "animate", f"'{weights}' is a file, not a folder; expected a folder written by")


def test_animate_reads_the_motion_file_before_the_face_is_looked_for(capsys, tmp_path, inputs, no_work):
    files = inputs[0]
    motion = tmp_path / "long.json"
    motion.write_text('{"fps": 25, "frames": [{"frame": 0, "jawOpen": 0.1}, {"frame": 1, "jawOpen": NaN}]}')
    code, err = run(capsys, "animate", "--source", files["photo"], "--driving", motion, "-o", tmp_path / "o.mp4", "-q")
    assert code == 2 and err.count("\n") == 1 and "long.json" in err  # the motion file's own line
    code, err = run(capsys, "animate", "--source", files["photo"], "--driving", files["motion"], "-o",
                    tmp_path / "o.png", "-q")
    assert_refused(code, err, "animate", "an image output needs a single driving frame; the driving has 75")


def test_animate_refuses_a_batch_beyond_the_limit(capsys, tmp_path, inputs, checkpoint, no_work):
    files = inputs[0]
    motion = tmp_path / "long.json"
    motion.write_text(json.dumps({"fps": 25, "frames": [{"frame": 0}, {"frame": 1999, "jawOpen": 1}]}))
    code, err = run(capsys, "animate", "--source", files["photo"], "--driving", motion, "-o", tmp_path / "o.mp4",
                    "--checkpoint", checkpoint, "--no-ica", "--clip-length", 32, "--batch-size", 100, "-q")
    # 2000 frames make 63 clips of 32: batches of min(100, 63) clips
    assert_refused(code, err, "animate", "generation: 2016 frames in one denoising pass (batch_size x clip_length) "
                                         "is more than the limit of 256")


def test_animate_refuses_a_source_larger_than_an_output_may_be(capsys, tmp_path, inputs, no_work):
    wide = tmp_path / "panorama.png"
    write_image(wide, np.zeros((16, 4200, 3), np.uint8))  # pasted back, each frame would be 4200 wide
    code, err = run(capsys, "animate", "--source", wide, "--driving", inputs[0]["motion"], "-o", tmp_path / "o.mp4",
                    "-q")
    assert_refused(code, err, "animate", "4200 pixels wide or high (4200x16) is more than the limit of 4096 "
                                         "(set MIMAFACE_MAX_OUTPUT_SIDE to allow more)", "--crop")


# ------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("flags, expected", [
    (["--size", "100000"], ("the render: 100000 pixels wide or high (100000x100000) is more than the limit of "
                            "4096 (set MIMAFACE_MAX_OUTPUT_SIDE to allow more)")),
    (["--size", "-5"], "render size must be positive"),
    (["--alpha", "2"], "--alpha must be a number from 0 to 1"),
])
def test_render_refuses_sizes_beyond_the_limit(capsys, tmp_path, flags, expected):
    out = tmp_path / "out.mp4"
    code, err = run(capsys, "render", asset_path("talk.json"), "-o", out, *flags, "-q")
    assert_refused(code, err, "render", expected)
    assert list(tmp_path.iterdir()) == []


def test_a_warning_about_an_input_is_one_line(capsys, tmp_path):
    full, cut = tmp_path / "full.mp4", tmp_path / "cut.mp4"
    noise = np.random.default_rng(0).integers(0, 255, (25, 48, 64, 3), dtype=np.uint8)  # most bytes: frames
    write_video(full, noise, 25)
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.mp4"
    code, err = run(capsys, "render", asset_path("talk.json"), "-o", out, "--overlay", cut, "-q")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 0 and out.exists() and len(lines) == 1, err
    assert lines[0].startswith(f"mimaface render: warning: {cut}: decoded ") and "it may be truncated" in lines[0]


# ---------------------------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    pipe = MIMAFacePipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("changes, expected", [
    ({"motion": None}, "motion must be MotionCoefficients, got NoneType"),
    ({"num_inference_steps": 0}, "num_inference_steps must be a whole number of at least 1, got 0"),
    ({"num_inference_steps": 1.5}, "num_inference_steps must be a whole number"),
    ({"num_inference_steps": -3}, "num_inference_steps must be a whole number"),
    ({"num_inference_steps": 2000}, "2000 denoising steps are more than the 1000"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number of at least 0"),
    ({"guidance_scale": -5.0}, "guidance_scale must be a finite number of at least 0"),
    ({"guidance_scale": "2"}, "guidance_scale must be a finite number"),
    ({"clip_length": 0}, "clip_length must be a whole number of at least 1, got 0"),
    ({"clip_length": 1}, "the ICA overlap of 1 frame(s) (as the model was trained) must be below the clip length of 1"),
    ({"clip_length": 10**6}, "a clip length of 1000000 frames is more than the 32 the model's motion modules know"),
    ({"clip_length": 4, "overlap": 4}, "the ICA overlap of 4 frame(s) must be below the clip length of 4"),
    ({"overlap": -1}, "overlap must be a whole number of at least 0"),
    ({"batch_size": 0}, "batch_size must be a whole number of at least 1"),
    ({"decode_chunk_size": 0}, "decode_chunk_size must be a whole number of at least 1"),
    ({"generator": 5}, "generator must be a torch.Generator or a list of them"),
    ({"latents": "noise"}, "latents must be a tensor of finite numbers"),
    ({"source_image": np.zeros((64, 64, 3), np.float32)}, "the source crop must be a (64, 64, 3) uint8 array"),
])
def test_pipeline_arguments_are_checked(pipeline, changes, expected):
    import torch

    if "latents" in changes and changes["latents"] == "noise":
        changes = {"latents": torch.full((6, 4, 16, 16), float("nan"))}
    kwargs = {"source_image": np.zeros((64, 64, 3), np.uint8), "motion": motion_of(8), "num_inference_steps": 1}
    kwargs.update(changes)
    with pytest.raises(InputError) as error:
        pipeline(kwargs.pop("source_image"), kwargs.pop("motion"), **kwargs)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_pipeline_settings_are_checked(pipeline, checkpoint, tmp_path):
    for size, expected in ((0, "image_size must be a multiple of 4 from 4 to 4096"), (66, "got 66"),
                           (10**6, "got 1000000")):
        with pytest.raises(InputError, match=expected.replace("(", r"\(")):
            MIMAFacePipeline(pipeline.model, pipeline.vae, pipeline.scheduler, image_size=size)
    with pytest.raises(InputError, match="overlap must be a whole number from 0 to clip_length - 1 = 5"):
        MIMAFacePipeline(pipeline.model, pipeline.vae, pipeline.scheduler, image_size=64, clip_length=6, overlap=6)
    # a crafted model folder is refused from its model_index.json, before any weights are read
    folder = tmp_path / "crafted"
    folder.mkdir()
    index = json.loads((checkpoint / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"image_size": 10**6}))
    with pytest.raises(InputError, match="model_index.json: image_size must be .* got 1000000"):
        MIMAFacePipeline.read_settings(folder)


def test_batches_beyond_the_limit_are_refused_before_anything_is_made(pipeline):
    settings = pipeline.settings()
    kwargs = {"num_inference_steps": 1, "clip_length": 32, "overlap": None, "batch_size": 16}
    assert check_generation(settings, video=True, use_ica=False, num_frames=100, **kwargs) == (32, 0)  # 4 clips
    with pytest.raises(InputError, match="512 frames in one denoising pass"):
        check_generation(settings, video=True, use_ica=False, num_frames=1000, **kwargs)
    with pytest.raises(InputError, match="300 frames in one denoising pass .batch_size. is more than the limit of 256"):
        check_generation(settings, video=False, use_ica=True, num_frames=1000,
                         **(kwargs | {"batch_size": 300}))


def test_sampling_options_are_checked_when_made():
    assert SamplingOptions(seed=2**64 - 1).seed == 2**64 - 1
    for bad, expected in (({"seed": 2**64}, "seed must be a whole number from 0 to 2**64 - 1"),
                          ({"seed": -1}, "seed"), ({"guidance_scale": -5}, "guidance_scale"),
                          ({"num_inference_steps": 0}, "num_inference_steps"), ({"scheduler": "plms"}, "ddim, euler"),
                          ({"use_ica": "yes"}, "use_ica must be True or False")):
        with pytest.raises(InputError, match=expected.replace("*", r"\*")):
            SamplingOptions(**bad)


def test_the_warp_engine_checks_its_motion_and_crop_side(monkeypatch, model):
    from mimaface.warp import MeshWarpPipeline
    from mimaface.warp.engine import WarpConfig

    motion = motion_of(1)
    warp = MeshWarpPipeline(face_model=model)
    with pytest.raises(InputError, match="motion must be MotionCoefficients, got NoneType"):
        warp(np.zeros((64, 64, 3), np.uint8), None, source_coefficients=motion)
    monkeypatch.setenv("MIMAFACE_MAX_OUTPUT_SIDE", "48")
    with pytest.raises(InputError, match=r"the source crop must be 32 to 48 pixels wide \(the limit of an output's "
                                         r"side\), got 64"):
        warp(np.zeros((64, 64, 3), np.uint8), motion, source_coefficients=motion)
    assert WarpConfig().map_size == 256  # a map larger than the crop is never made: not bounded by the limit
