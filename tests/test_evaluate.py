"""`mimaface evaluate` on a small SynthTalk split with a random-weight model: every output is
written, and the figures agree with metrics computed independently from the same frames."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from mimaface.cli import main as cli_main
from mimaface.data.clipstore import read_dataset_info
from mimaface.evaluation.evaluate import EvaluateOptions, make_pairs
from mimaface.evaluation.metrics import boundary_consistency, psnr
from mimaface.synthtalk import SynthConfig, render_identity


def test_pairs_same_and_cross(tiny_synthtalk):
    pairs = make_pairs(tiny_synthtalk, EvaluateOptions(seed=1))
    same = [p for p in pairs if p.mode == "same"]
    cross = [p for p in pairs if p.mode == "cross"]
    assert len(same) == len(cross) == 4  # 2 held-out identities x 2 clips
    for p in same:
        assert p.source is p.driving and np.array_equal(p.truth, p.source.frames())
        assert np.array_equal(p.source_frame, p.truth[0])
    recipe = SynthConfig(**read_dataset_info(tiny_synthtalk)["config"])
    for p in cross:
        assert p.source.identity != p.driving.identity
        assert np.allclose(p.motion.pose, p.driving.motion().pose)  # absolute: the driving's own motion
        assert np.allclose(p.motion.identity, p.source.motion().identity)  # with the source's face shape
        truth = render_identity(recipe, int(p.source.identity[2:]), p.motion)
        assert np.array_equal(p.truth, truth)
    # the pairing is fixed by the seed
    again = make_pairs(tiny_synthtalk, EvaluateOptions(seed=1, modes=("cross",)))
    assert [p.driving for p in again] == [p.driving for p in cross]


def test_evaluate_command_writes_the_report(tiny_synthtalk, checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_synthtalk), "-o", str(out),
                     "--steps", "1", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "### same-identity" in printed and "### cross-identity" in printed
    for name in ("metrics.md", "metrics.json", "metrics.csv", "per_pair.json", "distributions.png",
                 "over_frames.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "figures").glob("*.png"))) == 8
    summary = json.loads((out / "metrics.json").read_text())
    table = summary["table"]
    assert set(table) == {"same", "cross"}
    assert set(table["same"]) == {"generated", "ground truth", "source held still", "I_R only"}
    assert "psnr" not in table["same"]["ground truth"]  # nothing to compare the truth with
    assert "fd" in table["same"]["generated"] and "lpips" not in table["same"]["generated"]
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 8 and {r["row"] for r in rows} == set(table["same"])

    # Independent checks of the reference rows from the same pairs.
    pairs = make_pairs(tiny_synthtalk, EvaluateOptions())
    for mode in ("same", "cross"):
        mine = [p for p in pairs if p.mode == mode]
        still = np.mean([psnr(np.repeat(p.source_frame[None], len(p.truth), 0), p.truth) for p in mine])
        assert table[mode]["source held still"]["psnr"] == pytest.approx(still)
        starts = [0, 6]  # 10 frames in clips of 6 with k = 1: windows at 0 and 5, the second adds frames 6..9
        seams = np.mean([boundary_consistency(p.truth, starts)["ratio"] for p in mine])
        assert table[mode]["ground truth"]["boundary_ratio"] == pytest.approx(seams)
        # the estimator reads the truth better than a random-weight generator's output
        assert table[mode]["ground truth"]["pose_error"] < table[mode]["generated"]["pose_error"]


def test_evaluate_errors(tiny_synthtalk, checkpoint, tmp_path, capsys):
    code = cli_main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path), "-o", str(tmp_path / "r"),
                     "-q"])
    assert code == 2 and "dataset.json" in capsys.readouterr().err
    code = cli_main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_synthtalk), "-o",
                     str(tmp_path / "r"), "--fid-weights", str(tmp_path / "pt_inception.pth"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "pt_inception-2015-12-05" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def real_faces(tmp_path_factory):
    """A data set of real faces: two photos (the astronaut, Grace Hopper) turned into slowly rolling,
    shifting videos and preprocessed like any talking-head video."""
    from matplotlib import cbook
    from PIL import Image

    from mimaface.demo import asset_path, warped_clip
    from mimaface.media import load_image, write_video

    videos = tmp_path_factory.mktemp("videos")
    photos = {"astronaut": load_image(asset_path("portrait.jpg")),
              "hopper": np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))}
    for name, photo in photos.items():
        (videos / name).mkdir()
        frames, _ = warped_clip(photo, 14, max_roll=8, max_shift=0.03, max_zoom=0.05)
        write_video(videos / name / "clip0.mp4", frames, 25)
    root = tmp_path_factory.mktemp("real") / "data"
    assert cli_main(["preprocess", str(videos), "-o", str(root), "--size", "64", "--test-fraction", "0.5",
                     "--min-clip-frames", "10", "-q"]) == 0
    return root


def test_evaluate_real_faces_reads_them_with_face3d_and_dlib(real_faces, checkpoint, tmp_path):
    from mimaface.evaluation.evaluate import evaluate

    summary = evaluate(checkpoint, real_faces, tmp_path / "report",
                       EvaluateOptions(split="train", modes=("same",), num_inference_steps=1), progress=False)
    assert summary["reader"] == "dlib"
    table = summary["table"]["same"]
    truth, still = table["ground truth"], table["source held still"]
    # The truth read back by face3d: the coefficients stored for it were fitted by face3d too.
    assert truth["face_found"] == 1.0 and truth["pose_error"] < 2.0
    assert still["csim"] == pytest.approx(1.0)  # the source compared with itself
    assert truth["csim"] > 0.95  # the same person in every frame
    assert "fd" in still and "CSIM-dlib" in (tmp_path / "report" / "metrics.md").read_text()
    assert 0 <= table["generated"]["face_found"] <= 1


def test_interrupted_evaluation_resumes_without_regenerating(tiny_synthtalk, checkpoint, tmp_path, monkeypatch):
    from mimaface.evaluation.evaluate import evaluate
    from mimaface.pipelines.pipeline import MIMAFacePipeline

    options = EvaluateOptions(modes=("same",), num_inference_steps=1, figures=0)
    original, calls, interrupt = MIMAFacePipeline.generate_clips, [], [True]

    def counted(self, *args, **kwargs):
        calls.append(1)
        if interrupt and len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MIMAFacePipeline, "generate_clips", counted)
    report = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        evaluate(checkpoint, tiny_synthtalk, report, options, progress=False)
    assert len(list((report / "generated").glob("*.npz"))) == 2  # the two pairs made before the interruption

    interrupt.clear()
    calls.clear()
    resumed = evaluate(checkpoint, tiny_synthtalk, report, options, progress=False)
    assert len(calls) == 2  # only the two pairs that were missing
    fresh = evaluate(checkpoint, tiny_synthtalk, tmp_path / "fresh", options, progress=False)
    assert resumed["table"] == fresh["table"]
    # Another sampling setting: the kept videos are discarded and all four generated again.
    calls.clear()
    evaluate(checkpoint, tiny_synthtalk, report, dataclasses.replace(options, num_inference_steps=2), progress=False)
    assert len(calls) == 4
