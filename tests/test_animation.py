"""Retargeting, the animate command and its errors, on a random-weight model. (What the trained model achieves is measured
with the bundled model.)"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from conftest import motion_of

from mimaface.cli import main as cli_main
from mimaface.demo import asset_path
from mimaface.face3d.coefficients import load_motion
from mimaface.face3d.model import FaceModel
from mimaface.media import has_audio, probe_video
from mimaface.pipelines.retarget import RetargetConfig, retarget


def test_retarget_relative_absolute_and_options():
    source = dataclasses.replace(motion_of(1, seed=1), identity=np.full(FaceModel.load().num_identities, 0.5))
    source.pose[0] = [5, -3, 2, 0.1, -0.05, 0.9]
    driving = motion_of(5, seed=2)
    driving.pose[:, 5] = np.linspace(0.8, 1.0, 5)
    rel = retarget(source, driving)
    assert np.allclose(rel.pose[0], source.pose[0]) and np.allclose(rel.expression[0], source.expression[0])
    assert np.allclose(rel.pose[:, 0] - rel.pose[0, 0], driving.pose[:, 0] - driving.pose[0, 0])
    assert np.allclose(rel.pose[:, 5] / rel.pose[0, 5], driving.pose[:, 5] / driving.pose[0, 5])
    assert np.array_equal(rel.identity, source.identity) and rel.num_frames == 5
    assert rel.expression.min() >= 0 and rel.expression.max() <= 1
    half = retarget(source, driving, RetargetConfig(pose_multiplier=0.5))
    assert np.allclose(half.pose[:, 0] - half.pose[0, 0], 0.5 * (driving.pose[:, 0] - driving.pose[0, 0]))
    absolute = retarget(source, driving, RetargetConfig(mode="absolute"))
    assert np.allclose(absolute.pose, driving.pose) and np.allclose(absolute.expression, driving.expression)
    kept = retarget(source, driving, RetargetConfig(keep_pose=True, keep_gaze=True))
    assert np.allclose(kept.pose, source.pose[0]) and np.allclose(kept.gaze, source.gaze[0])


def test_animate_command_with_motion_json_and_video_with_audio(checkpoint, tmp_path, capsys):
    out, sbs = tmp_path / "out.mp4", tmp_path / "sbs.mp4"
    assert cli_main(["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(asset_path("talk.json")),
                     "-o", str(out), "--checkpoint", str(checkpoint), "--steps", "1", "--side-by-side", str(sbs),
                     "-q"]) == 0
    n = load_motion(asset_path("talk.json")).num_frames
    info = probe_video(out)
    assert (info.num_frames, info.fps, info.width) == (n, 25.0, 256)  # pasted into the 256 px portrait
    assert probe_video(sbs).num_frames == n
    # A driving video at 10 fps with a sound track: same frame count, same rate, the sound muxed in.
    driving = tmp_path / "driving.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-loop", "1", "-i", str(asset_path("portrait.jpg")),
                    "-f", "lavfi", "-i", "sine=frequency=300:duration=1.3", "-t", "1.3", "-r", "10",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(driving)], check=True)
    frames_in = probe_video(driving).num_frames
    out2 = tmp_path / "out2.mp4"
    assert cli_main(["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(driving), "-o",
                     str(out2), "--checkpoint", str(checkpoint), "--steps", "1", "--crop", "-q"]) == 0
    info2 = probe_video(out2)
    assert (info2.num_frames, info2.fps, info2.width) == (frames_in, 10.0, 64) and has_audio(out2)


@pytest.mark.parametrize("case", ["bad_suffix", "no_folder", "wrong_checkpoint", "no_face", "image_out_many",
                                  "unknown_blendshape", "empty_video", "tiny_source"])
def test_animate_errors(checkpoint, tmp_path, capsys, case):
    source, driving = str(asset_path("portrait.jpg")), str(asset_path("talk.json"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "out.mp4"
    ck = str(checkpoint)
    if case == "bad_suffix":
        out = tmp_path / "out.avi"
    elif case == "no_folder":
        out = tmp_path / "missing" / "out.mp4"
    elif case == "wrong_checkpoint":
        ck = str(checkpoint / "vae")
    elif case == "no_face":
        blank = tmp_path / "blank.png"
        from mimaface.media import write_image
        write_image(blank, np.full((128, 128, 3), 90, np.uint8))
        source = str(blank)
    elif case == "image_out_many":
        out = tmp_path / "out.png"
    elif case == "unknown_blendshape":
        motion = json.loads(asset_path("talk.json").read_text())
        motion["frames"][1]["jawOpenWide"] = 0.5
        driving = str(inputs / "motion.json")
        (inputs / "motion.json").write_text(json.dumps(motion))
    elif case == "empty_video":
        driving = str(inputs / "empty.mp4")
        (inputs / "empty.mp4").write_bytes(b"")
    elif case == "tiny_source":
        from mimaface.media import write_image
        source = str(inputs / "tiny.png")
        write_image(source, np.full((12, 12, 3), 90, np.uint8))
    code = cli_main(["animate", "--source", source, "--driving", driving, "-o", str(out), "--checkpoint", ck,
                     "--steps", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mimaface animate: error:"), err
    if case == "unknown_blendshape":
        assert "jawOpenWide" in err and "jawOpen" in err.replace("jawOpenWide", "")  # names the valid ones
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_animate_reports_each_phase_and_checks_inputs_before_loading(checkpoint, tmp_path, capsys, monkeypatch):
    from mimaface.pipelines import animate as animate_module
    from mimaface.pipelines.pipeline import MIMAFacePipeline

    out = tmp_path / "out.mp4"
    assert cli_main(["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(asset_path("talk.json")),
                     "-o", str(out), "--checkpoint", str(checkpoint), "--steps", "1"]) == 0
    err = capsys.readouterr().err
    phases = ["finding the face in", "reading the driving motion from", "loading the model from", "generating 75 frame(s)",
              f"wrote {out}"]
    positions = [err.find(phase) for phase in phases]
    assert -1 not in positions and positions == sorted(positions), err
    # A source without a face fails before the model is loaded.
    loads = []
    monkeypatch.setattr(MIMAFacePipeline, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    blank = tmp_path / "blank.png"
    from mimaface.media import write_image
    write_image(blank, np.full((128, 128, 3), 90, np.uint8))
    with pytest.raises(Exception, match="face"):
        animate_module.animate(blank, asset_path("talk.json"), tmp_path / "x.mp4", checkpoint=checkpoint, progress=False)
    assert loads == []


def test_engine_choice(checkpoint, tmp_path, capsys):
    from mimaface.pipelines.engines import choose_engine

    assert choose_engine(None, None) == "warp" and choose_engine(None, checkpoint) == "diffusion"
    assert choose_engine("diffusion", None) == "diffusion"  # the bundled model, asked for by name
    with pytest.raises(Exception, match="unknown engine"):
        choose_engine("gan", None)
    out = tmp_path / "warp.mp4"
    # Without --checkpoint: the warp engine, said in one line; the photo's own pixels move.
    assert cli_main(["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(asset_path("talk.json")),
                     "-o", str(out), "--crop"]) == 0
    err = capsys.readouterr().err
    assert err.count("mesh-warp engine (the bundled diffusion model knows only synthetic faces") == 1
    info = probe_video(out)
    assert info.num_frames == load_motion(asset_path("talk.json")).num_frames and info.width > 64  # the native crop
    code = cli_main(["animate", "--source", str(asset_path("portrait.jpg")), "--driving", str(asset_path("talk.json")),
                     "-o", str(tmp_path / "x.mp4"), "--engine", "warp", "--checkpoint", str(checkpoint), "-q"])
    assert code == 2 and "warp engine uses none" in capsys.readouterr().err
