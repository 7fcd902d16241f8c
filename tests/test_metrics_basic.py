"""PSNR, SSIM, boundary consistency and colour drift on cases with known answers."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mimaface.evaluation.metrics import boundary_consistency, colour_drift, frame_changes, masked_psnr, psnr, ssim


def test_psnr_matches_scikit_image_and_known_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    assert psnr(a, a) == float("inf")
    c = a.astype(np.float64)
    assert psnr(c, c + 1) == pytest.approx(20 * np.log10(255))  # MSE 1
    mask = np.zeros((4, 16, 16), bool)
    mask[:, :8] = True
    d = c.copy()
    d[:, 8:] += 50  # outside the mask only
    assert masked_psnr(c, d + np.where(mask[..., None], 1.0, 0.0), mask) == pytest.approx(20 * np.log10(255))


def test_boundary_consistency_finds_seams():
    frames = np.cumsum(np.ones((12, 4, 4, 3)), 0)  # +1 per frame everywhere
    frames[6:] += 4  # a jump into frame 6
    assert np.allclose(frame_changes(frames), [1] * 5 + [5] + [1] * 5)
    out = boundary_consistency(frames, [0, 6])
    assert out["boundary"] == pytest.approx(5) and out["within"] == pytest.approx(1) and out["ratio"] == pytest.approx(5)
    assert boundary_consistency(np.cumsum(np.ones((12, 2, 2, 3)), 0), [0, 4, 8])["ratio"] == pytest.approx(1)
    assert boundary_consistency(np.zeros((6, 2, 2, 3)), [0, 3])["ratio"] == 1.0  # a still video has no seams
    with pytest.raises(ValueError):
        boundary_consistency(frames, [0])


def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(1)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 4, (3, 32, 40, 3)), 1), 2)
    a = np.clip(smooth - smooth.min() + 20, 0, 255).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-25, 26, a.shape), 0, 255).astype(np.uint8)
    reference = np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255, gaussian_weights=True,
                                               use_sample_covariance=False, sigma=1.5) for x, y in zip(a, b)])
    assert ssim(a, b) == pytest.approx(reference, abs=1e-9)
    assert ssim(a[0], b[0]) == pytest.approx(structural_similarity(a[0], b[0], channel_axis=-1, data_range=255,
                                                                   gaussian_weights=True, use_sample_covariance=False))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) < 0.95
    with pytest.raises(ValueError):
        ssim(a[:, :8, :8], b[:, :8, :8])


def test_colour_drift_measures_clip_means():
    frames = np.full((9, 4, 4, 3), 100.0)
    frames[3:6, ..., 0] += 3  # clip 2 is redder by 3
    frames[6:, ..., 1] += 4  # clip 3 is greener by 4
    out = colour_drift(frames, [0, 3, 6])
    assert out["max_from_first"] == pytest.approx(4) and out["mean_step"] == pytest.approx((3 + 5) / 2)
    assert colour_drift(np.full((6, 2, 2, 3), 7.0), [0, 2, 4]) == {"max_from_first": 0.0, "mean_step": 0.0}
    with pytest.raises(ValueError):
        colour_drift(frames, [0])
