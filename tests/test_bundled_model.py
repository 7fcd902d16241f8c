"""The bundled tiny model does the job: a held-out SynthTalk identity driven by another held-out
identity's motion, over many clips, against SynthTalk's exact ground truth; ICA at clip seams."""

from __future__ import annotations

import json

import pytest
import torch

from mimaface.demo import run_demo
from mimaface.media import probe_video
from mimaface.pipelines.pipeline import MIMAFacePipeline
from mimaface.pipelines.settings import BUNDLED_MODEL


def test_bundled_model_is_small_complete_and_documented():
    files = [p for p in BUNDLED_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
    record = json.loads((BUNDLED_MODEL / "training.json").read_text())
    assert set(record["stages"]) == {"vae", "stage1", "stage2"}
    assert all(s["commands"] for s in record["stages"].values())
    pipeline = MIMAFacePipeline.from_pretrained()
    assert pipeline.image_size == record["data"]["size"] and pipeline.config.clip_length == 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, steps=10, progress=False)


def test_reenactment_beats_the_source_held_still(demo):
    _, metrics = demo
    assert metrics["clips"] > 3 and metrics["frames"] == 72
    psnr, face = metrics["psnr_db"], metrics["face_psnr_db"]
    print(f"PSNR vs ground truth: generated {psnr['generated']:.2f}, still {psnr['source_held_still']:.2f}; "
          f"face: generated {face['generated']:.2f}, still {face['source_held_still']:.2f}")
    assert psnr["generated"] > psnr["source_held_still"]
    assert face["generated"] > face["source_held_still"] + 1.0


def test_ica_joins_clips(demo):
    _, metrics = demo
    c = metrics["boundary_consistency"]
    print(f"boundary / within-clip change: ICA {c['ica']['ratio']:.2f}, no ICA {c['no_ica']['ratio']:.2f}, "
          f"ground truth {c['ground_truth']['ratio']:.2f}")
    assert c["ica"]["ratio"] < c["no_ica"]["ratio"]
    assert c["ica"]["ratio"] < 1.5


def test_demo_outputs(demo):
    out, metrics = demo
    assert probe_video(out / "cross_identity.mp4").num_frames == metrics["frames"]
    assert probe_video(out / "motion_json.mp4").num_frames == 75
    assert (out / "summary.png").is_file()
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
