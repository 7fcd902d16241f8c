"""Pasting generated crops back into the source picture through a face-shaped mask."""

from __future__ import annotations

import numpy as np
import pytest

from mimaface.pipelines.compositing import PasteBack, colour_transfer

S = 64  # the model's crop size


def disc(cx: float, cy: float, radius: float) -> np.ndarray:
    """A (S, S) uint8 silhouette like I_R: grey inside a disc, 0 outside."""
    y, x = np.mgrid[:S, :S] + 0.5
    return np.where((x - cx) ** 2 + (y - cy) ** 2 < radius ** 2, 150, 0).astype(np.uint8)


def picture(height: int = 200, width: int = 240) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def ramp_crop() -> np.ndarray:
    """Columns 50, 52, ..., 176: where each generated pixel lands can be told from its value."""
    return np.repeat((50 + 2 * np.arange(S, dtype=np.uint8))[None, :, None], S, 0).repeat(3, 2)


def test_colour_transfer_matches_mean_and_spread():
    gain, offset = colour_transfer(np.array([[[10, 20, 30]], [[30, 40, 50]]], np.uint8),
                                   np.array([[[20, 20, 20]], [[60, 60, 60]]], np.uint8))
    assert np.allclose(gain, 2.0) and np.allclose(offset, [0, -20, -40])  # 40 - 2 x (20, 30, 40)


def test_inside_is_the_generated_crop_and_far_outside_is_the_source():
    image = picture()
    source_crop = np.random.default_rng(1).integers(60, 200, (S, S, 3), dtype=np.uint8)
    box = np.array([120.0, 100.0, 128.0])  # box pixels (0..127) = 2 x crop pixels, top left at (56, 36)
    paste = PasteBack(image, box, source_crop, disc(32, 36, 10))
    crop = ramp_crop()
    out = paste(crop, disc(32, 36, 10))
    gain, offset = colour_transfer(crop, source_crop)
    assert out.shape == image.shape and out.dtype == np.uint8
    # inside the disc (box pixels 48..79 around the centre 64, 72): the colour-corrected crop, in place;
    # box column i samples the crop at (i + 0.5) / 2 - 0.5, where the ramp is 49.5 + i
    i = np.arange(50, 79)
    expected = np.clip(gain * (49.5 + i)[:, None] + offset, 0, 255)
    assert np.abs(out[36 + 72, 56 + i].astype(float) - expected).max() <= 1.0
    # everything outside the box, and inside it below the chin and left of the dilated, feathered face
    outside = np.ones(image.shape[:2], bool)
    outside[36:164, 56:184] = False
    assert np.array_equal(out[outside], image[outside])
    below = 2 * (36 + 10) + int(np.ceil((paste.dilate + paste.feather) * 128))
    left = 2 * (32 - 10) - int(np.ceil((paste.dilate + paste.feather) * 128))
    assert np.array_equal(out[36 + below:164, 56:184], image[36 + below:164, 56:184])
    assert np.array_equal(out[36:164, 56:56 + left], image[36:164, 56:56 + left])
    # the hair margin: 6 crop pixels above the disc's top are the generated crop's, 6 below its chin are not
    mask = paste.mask(disc(32, 36, 10))
    assert mask[2 * (36 - 10) - 12, 64] == 1.0 and mask[2 * (36 + 10) + 12, 64] == 0.0


def test_mask_is_zero_along_the_box_edge_and_smooth():
    paste = PasteBack(picture(600, 600), np.array([300.0, 300.0, 512.0]), ramp_crop(), np.full((S, S), 200, np.uint8),
                      border=0.02)
    mask = paste.mask(np.full((S, S), 200, np.uint8))  # a face filling the whole crop
    border = 10  # pixels whose centre is within 0.02 x 512 of the edge
    for edge in (mask[:border], mask[-border:], mask[:, :border], mask[:, -border:]):
        assert edge.max() == 0.0
    assert mask[256, 256] == 1.0
    out = paste(ramp_crop(), np.full((S, S), 200, np.uint8))
    image = paste.image
    ring = np.ones((512, 512), bool)
    ring[border:-border, border:-border] = False
    assert np.array_equal(out[44:556, 44:556][ring], image[44:556, 44:556][ring])  # no step at the box edge
    # built at the paste resolution: no 8 px blocks of a 64 px mask, the weight changes gradually
    face = paste.mask(disc(32, 32, 14))
    assert np.abs(np.diff(face, axis=0)).max() < 0.1 and np.abs(np.diff(face, axis=1)).max() < 0.1
    assert len(np.unique(face[256].round(3))) > 30


def test_mask_covers_the_source_and_the_moved_face():
    source = disc(24, 32, 8)
    paste = PasteBack(picture(), np.array([120.0, 100.0, 128.0]), ramp_crop(), source)
    still, moved = paste.mask(source), paste.mask(disc(40, 32, 8))
    at = {"source": (64, 48), "moved": (64, 80), "beyond": (64, 112)}  # box pixels (row, column) = 2 x crop pixels
    assert still[at["source"]] == 1.0 and moved[at["source"]] == 1.0  # the source's face never shows through
    assert still[at["moved"]] == 0.0 and moved[at["moved"]] == 1.0  # the mask follows the head
    assert moved[at["beyond"]] == 0.0


def test_holes_in_the_silhouette_are_covered():
    ring = np.where(disc(32, 32, 16) > disc(32, 32, 8), 150, 0).astype(np.uint8)  # like the mesh's mouth hole
    paste = PasteBack(picture(), np.array([120.0, 100.0, 128.0]), ramp_crop(), ring)
    assert paste.mask(ring)[64, 64] == 1.0


@pytest.mark.parametrize("cx,cy", [(5.0, 8.0), (115.0, 95.0)])
def test_box_partly_outside_the_picture(cx, cy):
    image = picture(100, 120)
    crop = np.full((S, S, 3), 180, np.uint8)
    source_crop = np.full((S, S, 3), 90, np.uint8)  # both flat: the corrected crop is the source's 90
    paste = PasteBack(image, np.array([cx, cy, 60.0]), source_crop, disc(32, 32, 20))
    out = paste(crop, disc(32, 32, 20))
    assert out.shape == image.shape
    assert np.array_equal(out[int(cy), int(cx)], [90, 90, 90])  # the box centre is the generated crop
    far = (slice(50, 60), slice(50, 70))  # the picture's middle, outside both boxes
    assert np.array_equal(out[far], image[far])


def test_colour_correction_is_fixed_by_the_first_frame():
    source_crop = np.random.default_rng(2).integers(40, 220, (S, S, 3), dtype=np.uint8)
    paste = PasteBack(picture(), np.array([120.0, 100.0, 128.0]), source_crop, disc(32, 32, 12))
    first = ramp_crop()
    brighter = first + 30  # a second frame with another mean: corrected by the first frame's gain and offset
    a, b = paste(first, disc(32, 32, 12)), paste(brighter, disc(32, 32, 12))
    gain, _ = colour_transfer(first, source_crop)
    assert np.allclose(b[100, 120].astype(float) - a[100, 120], 30 * gain, atol=1.0)
    assert np.array_equal(paste(first, disc(32, 32, 12)), a)


def test_an_empty_source_silhouette_is_refused():
    with pytest.raises(ValueError, match="empty"):
        PasteBack(picture(), np.array([120.0, 100.0, 128.0]), ramp_crop(), np.zeros((S, S), np.uint8))
