"""The command line: subcommands, outputs, and one-line errors with no partial files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mimaface.cli import main
from mimaface.demo import asset_path
from mimaface.media import read_video, write_image


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "mimaface.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("extract", "render", "synth", "preprocess", "sheets", "demo"):
        assert command in result.stdout


def test_extract_then_render_image_and_overlay(capsys, tmp_path):
    coeffs = tmp_path / "portrait.npz"
    code, out, _ = run(capsys, "extract", asset_path("portrait.jpg"), "-o", coeffs, "-q")
    assert code == 0 and coeffs.exists() and "1 frame" in out
    code, _, _ = run(capsys, "render", coeffs, "-o", tmp_path / "render.png", "--size", 128, "-q")
    assert code == 0
    from mimaface.media import load_image
    render = load_image(tmp_path / "render.png")
    assert render.shape == (128, 128, 3) and render.max() > 0 and render[0, 0].max() == 0
    code, _, _ = run(capsys, "render", coeffs, "-o", tmp_path / "overlay.png", "--overlay", asset_path("portrait.jpg"), "-q")
    assert code == 0 and load_image(tmp_path / "overlay.png").shape == (256, 256, 3)


def test_render_motion_json_to_video(capsys, tmp_path):
    spec = {"fps": 10, "frames": [{"frame": 0, "jawOpen": 0}, {"frame": 9, "jawOpen": 1, "yaw": 20}]}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    code, _, _ = run(capsys, "render", tmp_path / "m.json", "-o", tmp_path / "m.mp4", "--size", 96, "-q")
    assert code == 0
    frames, fps = read_video(tmp_path / "m.mp4")
    assert frames.shape[:3] == (10, 96, 96) and fps == pytest.approx(10)
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1  # the face moved


@pytest.mark.parametrize("case", ["no_face", "missing", "bad_output", "bad_size", "bad_json"])
def test_errors_are_one_line_and_leave_no_output(capsys, tmp_path, case):
    out = tmp_path / "out.npz"
    if case == "no_face":
        write_image(tmp_path / "blank.png", np.full((64, 64, 3), 127, np.uint8))
        args = ["extract", tmp_path / "blank.png", "-o", out]
    elif case == "missing":
        args = ["extract", tmp_path / "nope.mp4", "-o", out]
    elif case == "bad_output":
        out = tmp_path / "out.txt"
        args = ["extract", asset_path("portrait.jpg"), "-o", out]
    elif case == "bad_size":
        out = tmp_path / "out.png"
        args = ["render", asset_path("talk.json"), "-o", out, "--size", 0]
    else:
        (tmp_path / "m.json").write_text(json.dumps({"frames": [{"smile": 1}]}))
        out = tmp_path / "out.mp4"
        args = ["render", tmp_path / "m.json", "-o", out]
    code, _, err = run(capsys, *args, "-q")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
