"""PSNR and boundary consistency on cases with known answers."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from mimaface.evaluation.metrics import boundary_consistency, frame_changes, masked_psnr, psnr


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
    with pytest.raises(ValueError):
        boundary_consistency(frames, [0])
