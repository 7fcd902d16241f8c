"""The SynthTalk estimator: training reduces its losses, save/load is exact, and the bundled one
reads pose, expression, gaze and identity off faces it never saw far better than guessing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mimaface.evaluation.estimator import (
    EstimatorTraining,
    FaceEstimator,
    augment,
    estimator_record,
    load_frames,
    measure_estimator,
    train_estimator,
)
from mimaface.models.errors import ModelLoadError
from mimaface.synthtalk import SynthConfig, held_out_identities, render_clip


def test_training_lowers_the_losses_and_saves_exactly(tiny_synthtalk, tmp_path):
    torch.set_num_threads(1)
    record = train_estimator(tiny_synthtalk, tmp_path / "estimator",
                             EstimatorTraining(steps=60, batch_size=32, learning_rate=3e-3), progress=False)
    log = record["log"]
    assert log[-1]["regression"] < 0.7 * log[0]["regression"]
    assert log[-1]["identity"] < 0.7 * log[0]["identity"]
    held = record["held_out"]
    assert held["identities"] == 2 and held["frames"] == 40
    loaded = FaceEstimator.from_pretrained(tmp_path / "estimator")
    assert estimator_record(tmp_path / "estimator")["held_out"] == held
    test = load_frames(tiny_synthtalk, "test")
    again = measure_estimator(loaded, test, load_frames(tiny_synthtalk, "train"))
    assert again["pose_angle_mae_deg"] == pytest.approx(held["pose_angle_mae_deg"], rel=1e-5)
    out = loaded.predict(test.images[:3])
    assert out["pose"].shape == (3, 6) and out["expression"].shape == (3, 36) and out["gaze"].shape == (3, 4)
    assert np.allclose(np.linalg.norm(out["embedding"], axis=1), 1, atol=1e-5)
    with pytest.raises(ModelLoadError, match="train-estimator"):
        FaceEstimator.from_pretrained(tmp_path / "missing")


def test_augment_keeps_shape_and_range_and_changes_pixels():
    images = torch.rand(8, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 0.01


def test_bundled_estimator_reads_held_out_identities():
    """Fresh clips of identities held out of its training data (the bundled model's recipe)."""
    estimator = FaceEstimator.from_pretrained()
    record = estimator_record()
    recipe = SynthConfig(**record["data_config"])
    held = sorted(held_out_identities(recipe))[:4]
    long = dataclasses.replace(recipe, frames=16)
    frames, targets, identity = [], {k: [] for k in ("pose", "expression", "gaze")}, []
    for i in held:
        clip_frames, _, motion = render_clip(long, i, 5)  # a clip index the data set never had
        frames.append(clip_frames)
        identity += [i] * len(clip_frames)
        for key, values in targets.items():
            values.append(getattr(motion, key))
    out = estimator.predict(np.concatenate(frames))
    truth = {k: np.concatenate(v) for k, v in targets.items()}
    mean = {k: np.array(estimator.config.target_mean[k]) for k in truth}
    for key, columns in (("pose", slice(0, 3)), ("expression", slice(None)), ("gaze", slice(None))):
        error = np.abs(out[key][:, columns] - truth[key][:, columns]).mean()
        guess = np.abs(mean[key][columns] - truth[key][:, columns]).mean()
        print(f"{key}: estimator {error:.4f}, predicting the training mean {guess:.4f}")
        assert error < 0.5 * guess
    cosine = out["embedding"] @ out["embedding"].T
    same = np.equal.outer(identity, identity)
    print(f"identity cosine: same {cosine[same].mean():.3f}, different {cosine[~same].mean():.3f}")
    assert cosine[same].mean() > cosine[~same].mean() + 0.3
