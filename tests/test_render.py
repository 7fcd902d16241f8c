"""Behaviour of the torch rasteriser and the grey face renderer (mimaface.face3d.render)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mimaface.face3d.render import (
    Fragments,
    interpolate,
    overlay,
    rasterize,
    render_grey,
    vertex_normals,
)


def pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H,W) normalised x and y of every pixel centre (camera.py conventions)."""
    j, i = np.meshgrid(np.arange(width), np.arange(height))
    return (2 * (j + 0.5) - width) / height, (height - 2 * (i + 0.5)) / height


def to_normalised(col: np.ndarray, row: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel-index coordinates (pixel (i, j) centre at col=j, row=i) to normalised x, y."""
    col, row = np.asarray(col, np.float64), np.asarray(row, np.float64)
    return np.stack([(2 * (col + 0.5) - width) / height, (height - 2 * (row + 0.5)) / height], -1)


def reference_inside(tri_xy: np.ndarray, height: int, width: int, tol: float = 1e-6):
    """Independent float64 point-in-triangle test at the pixel centres.

    Returns (inside, outside): pixels whose centre is strictly inside / strictly outside by more
    than ``tol`` (normalised units); those in neither are on an edge and left out of comparisons.
    """
    x, y = pixel_centres(height, width)
    (x0, y0), (x1, y1), (x2, y2) = np.asarray(tri_xy, np.float64)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    values = []
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y1)), ((x1, y1), (x2, y2)), ((x2, y2), (x0, y0))):
        length = math.hypot(bx - ax, by - ay)
        values.append(np.sign(area) * ((bx - ax) * (y - ay) - (by - ay) * (x - ax)) / length)
    values = np.stack(values)
    return (values > tol).all(0), (values < -tol).any(0)


def grid_mesh(n_cols: int, n_rows: int, x0: float, y0: float, x1: float, y1: float, z=0.0):
    """A flat grid of quads, each split into two triangles (alternating diagonals)."""
    xs, ys = np.meshgrid(np.linspace(x0, x1, n_cols + 1), np.linspace(y0, y1, n_rows + 1))
    verts = np.stack([xs, ys, np.broadcast_to(z, xs.shape)], -1).reshape(-1, 3)
    idx = np.arange((n_cols + 1) * (n_rows + 1)).reshape(n_rows + 1, n_cols + 1)
    faces = []
    for r in range(n_rows):
        for c in range(n_cols):
            a, b, d, e = idx[r, c], idx[r, c + 1], idx[r + 1, c], idx[r + 1, c + 1]
            faces += [(a, b, e), (a, e, d)] if (r + c) % 2 == 0 else [(a, b, d), (b, e, d)]
    return torch.tensor(verts, dtype=torch.float32), torch.tensor(faces, dtype=torch.int64)


# --- coverage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(40, 40), (31, 57)])
@pytest.mark.parametrize("winding", ["ccw", "cw"])
def test_single_triangle_mask_matches_point_in_triangle(size, winding):
    height, width = size
    tri = np.array([[-0.71, -0.63], [0.52, -0.18], [-0.12, 0.77]])
    if winding == "cw":
        tri = tri[::-1].copy()
    verts = torch.tensor(np.concatenate([tri, np.full((3, 1), 0.3)], 1), dtype=torch.float32)
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), height, width)
    inside, outside = reference_inside(tri, height, width)
    mask = frags.mask[0].numpy()
    assert frags.face_index.shape == (1, height, width) and frags.bary.shape == (1, height, width, 3)
    assert inside.sum() > 50
    assert mask[inside].all() and not mask[outside].any()
    assert (frags.face_index[0].numpy()[mask] == 0).all() and (frags.face_index[0].numpy()[~mask] == -1).all()
    assert np.allclose(frags.depth[0].numpy()[mask], 0.3, atol=1e-6)
    assert np.isneginf(frags.depth[0].numpy()[~mask]).all()
    assert (frags.bary[0].numpy()[~mask] == 0).all()


def test_windings_and_vertex_order_cover_the_same_pixels():
    tri = np.array([[-0.5, -0.4, 0.0], [0.6, -0.1, 0.0], [0.0, 0.7, 0.0]])
    verts = torch.tensor(tri, dtype=torch.float32)
    masks = [rasterize(verts, torch.tensor([order]), 48, 48).mask for order in
             ([0, 1, 2], [0, 2, 1], [1, 2, 0], [2, 1, 0])]
    for m in masks[1:]:
        assert torch.equal(m, masks[0])


@pytest.mark.parametrize("z_near, z_far", [(0.5, -0.2), (-0.2, -0.5), (0.7, 0.3), (0.01, 0.0)])
def test_closer_triangle_wins_regardless_of_order(z_near, z_far):
    height = width = 32
    near = [[-0.8, -0.8, z_near], [0.6, -0.7, z_near], [-0.7, 0.6, z_near]]
    far = [[-0.4, -0.9, z_far], [0.9, -0.2, z_far], [0.3, 0.9, z_far]]
    verts = torch.tensor(near + far, dtype=torch.float32)
    in_near, _ = reference_inside(np.array(near)[:, :2], height, width)
    in_far, _ = reference_inside(np.array(far)[:, :2], height, width)
    assert (in_near & in_far).sum() > 30
    for faces, near_id in (([[0, 1, 2], [3, 4, 5]], 0), ([[3, 4, 5], [0, 1, 2]], 1)):
        frags = rasterize(verts, torch.tensor(faces), height, width)
        fi = frags.face_index[0].numpy()
        assert (fi[in_near] == near_id).all()
        assert (fi[in_far & ~in_near] == 1 - near_id).all()
        assert np.allclose(frags.depth[0].numpy()[in_near], z_near)
        assert np.allclose(frags.depth[0].numpy()[in_far & ~in_near], z_far)


def test_depth_is_the_interpolated_surface():
    tri = np.array([[-0.9, -0.8, -0.3], [0.8, -0.6, 0.4], [0.1, 0.9, 0.9]])
    frags = rasterize(torch.tensor(tri, dtype=torch.float32), torch.tensor([[0, 1, 2]]), 36, 36)
    mask = frags.mask[0].numpy()
    expected = (frags.bary[0].numpy() @ tri[:, 2])[mask]
    assert np.allclose(frags.depth[0].numpy()[mask], expected, atol=1e-5)


def test_barycentric_interpolation_reproduces_pixel_centres():
    height, width = 48, 64
    rng = np.random.default_rng(0)
    verts, faces = grid_mesh(6, 5, -1.1, -0.9, 1.2, 0.85)
    verts[:, :2] += torch.tensor(rng.uniform(-0.05, 0.05, (len(verts), 2)), dtype=torch.float32)
    verts[:, 2] = torch.tensor(rng.uniform(-0.2, 0.2, len(verts)), dtype=torch.float32)
    frags = rasterize(verts, faces, height, width)
    xy = interpolate(verts[:, :2], faces, frags)[0].numpy()
    x, y = pixel_centres(height, width)
    mask = frags.mask[0].numpy()
    assert mask.mean() > 0.7
    assert np.abs(xy[..., 0][mask] - x[mask]).max() < 1e-4
    assert np.abs(xy[..., 1][mask] - y[mask]).max() < 1e-4
    bary = frags.bary[0].numpy()[mask]
    assert np.allclose(bary.sum(-1), 1, atol=1e-5) and (bary >= 0).all()
    assert (xy[~mask] == 0).all()


def test_flat_quad_has_no_holes_on_the_shared_diagonal():
    height = width = 41
    # Corners on pixel centres: both the outline and the diagonal pass exactly through centres.
    corners = to_normalised(np.array([5, 35, 35, 5]), np.array([6, 6, 34, 34]), height, width)
    verts = torch.tensor(np.concatenate([corners, np.zeros((4, 1))], 1), dtype=torch.float32)
    for faces in ([[0, 1, 2], [0, 2, 3]], [[0, 2, 1], [0, 3, 2]], [[1, 3, 0], [3, 1, 2]], [[0, 1, 3], [2, 3, 1]]):
        mask = rasterize(verts, torch.tensor(faces), height, width).mask[0].numpy()
        assert mask[7:34, 6:35].all()  # every centre strictly inside the square is covered
        assert not mask[:6].any() and not mask[35:].any() and not mask[:, :5].any() and not mask[:, 36:].any()


def test_pixels_on_a_shared_edge_have_one_owner_whatever_the_face_order():
    # A square cut into four triangles meeting at its centre: horizontal, vertical and diagonal
    # shared edges, all through pixel centres. All four at the same depth, so a pixel claimed by two
    # triangles would go to the higher index and its owner would change with the order of faces.
    height = width = 33
    xy = to_normalised(np.array([4, 28, 28, 4, 16, 16, 28, 4]), np.array([4, 4, 28, 28, 16, 4, 16, 16]), height, width)
    verts = torch.tensor(np.concatenate([xy, np.zeros((8, 1))], 1), dtype=torch.float32)
    # centre 4; top edge split at 5, right at 6, left at 7 -> triangles with horizontal/vertical edges
    triangles = [[4, 0, 5], [4, 5, 1], [4, 1, 6], [4, 6, 2], [4, 2, 3], [4, 3, 7], [4, 7, 0]]
    owners = []
    for perm_seed in range(4):
        order = np.random.default_rng(perm_seed).permutation(len(triangles))
        faces = torch.tensor([triangles[k] if perm_seed % 2 else triangles[k][::-1] for k in order])
        fi = rasterize(verts, faces, height, width).face_index[0].numpy()
        owners.append(np.where(fi >= 0, order[np.maximum(fi, 0)], -1))
        assert (fi[5:28, 5:28] >= 0).all()
    for other in owners[1:]:
        assert np.array_equal(other, owners[0])


@pytest.mark.parametrize("seed", [1, 2])
def test_grid_surface_is_watertight(seed):
    height, width = 60, 80
    rng = np.random.default_rng(seed)
    n_cols, n_rows = 9, 7
    # A grid with vertices on pixel centres (many exact ties on edges and at vertices) and, for
    # the second seed, interior vertices moved off the pixel lattice.
    cols = np.round(np.linspace(4, 75, n_cols + 1))
    rows = np.round(np.linspace(3, 56, n_rows + 1))
    cc, rr = np.meshgrid(cols, rows)
    if seed == 2:
        cc[1:-1, 1:-1] += rng.uniform(-2.5, 2.5, cc[1:-1, 1:-1].shape)
        rr[1:-1, 1:-1] += rng.uniform(-2.5, 2.5, rr[1:-1, 1:-1].shape)
    xy = to_normalised(cc.ravel(), rr.ravel(), height, width)
    verts = torch.tensor(np.concatenate([xy, rng.uniform(-0.1, 0.1, (len(xy), 1))], 1), dtype=torch.float32)
    _, faces = grid_mesh(n_cols, n_rows, 0, 0, 1, 1)
    faces = faces[torch.randperm(len(faces), generator=torch.Generator().manual_seed(seed))]
    mask = rasterize(verts, faces, height, width).mask[0].numpy()
    lo_c, hi_c, lo_r, hi_r = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    assert mask[lo_r + 1:hi_r, lo_c + 1:hi_c].all()
    outside = np.ones_like(mask)
    outside[lo_r:hi_r + 1, lo_c:hi_c + 1] = False
    assert not mask[outside].any()


def test_fan_around_a_vertex_on_a_pixel_centre_covers_it():
    height = width = 21
    centre = (10, 10)
    angles = np.radians(np.arange(0, 360, 45) + 10)
    ring_c = centre[0] + 7 * np.cos(angles)
    ring_r = centre[1] + 7 * np.sin(angles)
    xy = to_normalised(np.r_[centre[0], ring_c], np.r_[centre[1], ring_r], height, width)
    verts = torch.tensor(np.concatenate([xy, np.zeros((len(xy), 1))], 1), dtype=torch.float32)
    faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)])
    mask = rasterize(verts, faces, height, width).mask[0].numpy()
    assert mask[centre[1], centre[0]]
    assert mask[7:14, 7:14].all()


# --- batching, clipping, degenerate input ---------------------------------------------------------


def test_batch_equals_one_at_a_time():
    rng = np.random.default_rng(3)
    verts, faces = grid_mesh(5, 4, -0.8, -0.7, 0.8, 0.7)
    batch = verts.repeat(4, 1, 1)
    batch[..., :2] += torch.tensor(rng.uniform(-0.15, 0.15, (4, len(verts), 2)), dtype=torch.float32)
    batch[..., 2] = torch.tensor(rng.uniform(-0.5, 0.5, (4, len(verts))), dtype=torch.float32)
    together = rasterize(batch, faces, 30, 38)
    colours = torch.tensor(rng.uniform(0, 1, (4, len(verts), 2)), dtype=torch.float32)
    attrs = interpolate(colours, faces, together)
    images, masks = render_grey(batch, faces, 30, 38)
    for b in range(4):
        single = rasterize(batch[b], faces, 30, 38)
        assert torch.equal(together.face_index[b], single.face_index[0])
        assert torch.allclose(together.bary[b], single.bary[0])
        assert torch.equal(together.depth[b], single.depth[0])
        assert torch.allclose(attrs[b], interpolate(colours[b], faces, single)[0])
        image, mask = render_grey(batch[b:b + 1], faces, 30, 38)
        assert torch.equal(mask[0], masks[b]) and torch.allclose(image[0], images[b])
    assert not torch.equal(together.face_index[0], together.face_index[1])


def test_batch_larger_than_one_pass(monkeypatch):
    import mimaface.face3d.render as render

    verts, faces = grid_mesh(3, 3, -0.6, -0.6, 0.6, 0.6)
    batch = torch.stack([verts + torch.tensor([0.1 * b, 0.0, 0.0]) for b in range(5)])
    whole = rasterize(batch, faces, 16, 16)
    monkeypatch.setattr(render, "_CHUNK_PIXELS_CPU", 16 * 16 * 2)  # passes of 2 images
    parts = rasterize(batch, faces, 16, 16)
    assert torch.equal(whole.face_index, parts.face_index) and torch.equal(whole.bary, parts.bary)
    assert torch.allclose(interpolate(batch, faces, whole), interpolate(batch, faces, parts))
    assert torch.equal(render_grey(batch, faces, 16, 16)[0], render.render_grey(batch, faces, 16, 16)[0])


def test_triangles_partly_and_fully_outside():
    height, width = 24, 32
    partly = [[-1.8, -0.5, 0.0], [0.4, 1.7, 0.0], [0.9, -1.6, 0.0]]  # corners outside, middle inside
    outside = [[2.0, 0.0, 1.0], [3.0, 0.5, 1.0], [2.5, -0.5, 1.0]]  # right of the image
    huge = [[-50.0, -50.0, -1.0], [60.0, -40.0, -1.0], [0.0, 80.0, -1.0]]  # covers everything
    verts = torch.tensor(partly + outside + huge, dtype=torch.float32)

    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), height, width)
    inside, out = reference_inside(np.array(partly)[:, :2], height, width)
    mask = frags.mask[0].numpy()
    assert mask[inside].all() and not mask[out].any() and 0 < mask.sum() < height * width

    assert not rasterize(verts, torch.tensor([[3, 4, 5]]), height, width).mask.any()
    everything = rasterize(verts, torch.tensor([[6, 7, 8]]), height, width)
    assert everything.mask.all()
    xy = interpolate(verts[:, :2], torch.tensor([[6, 7, 8]]), everything)[0].numpy()
    assert np.abs(xy[..., 0] - pixel_centres(height, width)[0]).max() < 1e-3

    both = rasterize(verts, torch.tensor([[3, 4, 5], [0, 1, 2], [6, 7, 8]]), height, width)
    assert torch.equal(both.face_index[0][frags.mask[0]], torch.ones(int(mask.sum()), dtype=torch.int64))
    assert (both.face_index[0][~frags.mask[0]] == 2).all()


def test_degenerate_and_non_finite_triangles_are_ignored():
    verts = torch.tensor([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0],  # collinear
                          [0.2, 0.2, 0.0], [0.2, 0.2, 0.0], [0.2, 0.2, 0.0],  # a point
                          [float("nan"), 0.0, 0.0], [0.5, -0.5, 0.0], [-0.5, 0.5, 0.0]])
    frags = rasterize(verts, torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]]), 20, 20)
    assert not frags.mask.any()
    empty = rasterize(verts, torch.zeros((0, 3), dtype=torch.int64), 20, 20)
    assert not empty.mask.any() and empty.face_index.shape == (1, 20, 20)
    image, mask = render_grey(verts, torch.tensor([[0, 1, 2]]), 20, 20)
    assert not mask.any() and (image == 0).all()


def test_input_types():
    verts, faces = grid_mesh(2, 2, -0.6, -0.6, 0.6, 0.6)
    reference = rasterize(verts, faces, 12, 14)
    for v, f in ((verts.double(), faces.int()), (verts, faces.numpy()), (verts[None], faces.numpy().astype(np.int32))):
        frags = rasterize(v, f, 12, 14)
        assert torch.equal(frags.face_index, reference.face_index)
        assert frags.bary.dtype == torch.float32 and frags.depth.dtype == torch.float32
    with pytest.raises(ValueError):
        rasterize(verts[:, :2], faces, 12, 14)


# --- interpolation and normals ---------------------------------------------------------------------


def test_interpolate_is_differentiable():
    verts, faces = grid_mesh(3, 2, -0.7, -0.6, 0.7, 0.6)
    frags = rasterize(verts, faces, 20, 24)
    attrs = torch.rand(len(verts), 4, requires_grad=True)
    out = interpolate(attrs, faces, frags)
    assert out.shape == (1, 20, 24, 4) and out.requires_grad
    out.sum().backward()
    # d(sum)/d(attribute) is the total barycentric weight of the vertex: they add up to the number
    # of covered pixels per channel.
    assert attrs.grad is not None and (attrs.grad > 0).any()
    assert torch.allclose(attrs.grad.sum(0), torch.full((4,), float(frags.mask.sum())), rtol=1e-4)

    batched = torch.rand(2, len(verts), 3, requires_grad=True)
    frags2 = rasterize(verts.expand(2, -1, -1), faces, 20, 24)
    interpolate(batched, faces, frags2)[1].sum().backward()
    assert (batched.grad[0] == 0).all() and batched.grad[1].abs().sum() > 0


def test_interpolate_on_hand_made_fragments():
    verts, faces = grid_mesh(2, 2, -0.8, -0.8, 0.8, 0.8)
    frags = rasterize(verts, faces, 16, 16)
    copy = Fragments(frags.face_index.clone(), frags.bary.clone(), frags.depth.clone())
    attrs = torch.rand(len(verts), 2)
    assert torch.allclose(interpolate(attrs, faces, copy), interpolate(attrs, faces, frags))


def test_vertex_normals_of_a_plane():
    verts, faces = grid_mesh(3, 3, -0.5, -0.5, 0.5, 0.5)
    normals = vertex_normals(verts, faces)
    assert normals.shape == verts.shape
    assert torch.allclose(normals, torch.tensor([0.0, 0.0, 1.0]).expand_as(normals), atol=1e-6)
    assert torch.allclose(vertex_normals(verts[None], faces.flip(1)), -normals[None], atol=1e-6)


# --- render_grey and overlay -------------------------------------------------------------------------


def rotate_y(verts: torch.Tensor, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float32)
    return verts @ rot.T


def test_render_grey_background_face_and_shading():
    height, width = 40, 80
    plane, faces = grid_mesh(3, 3, -0.35, -0.6, 0.35, 0.6)
    facing = plane + torch.tensor([-0.9, 0.0, 0.0])
    tilted = rotate_y(plane, 60.0) + torch.tensor([0.9, 0.0, 0.0])  # its normal turned away from the light
    verts = torch.cat([facing, tilted])
    both = torch.cat([faces, faces + len(plane)])
    image, mask = render_grey(verts, both, height, width)
    assert image.shape == (1, height, width, 3) and image.dtype == torch.float32 and mask.shape == (1, height, width)
    image, mask = image[0], mask[0]
    assert (image[~mask] == 0).all()
    assert (image[mask] > 0).all() and (image <= 1).all()
    assert torch.equal(image[..., 0], image[..., 1]) and torch.equal(image[..., 0], image[..., 2])
    left, right = image[:, : width // 2, 0], image[:, width // 2:, 0]
    lm, rm = mask[:, : width // 2], mask[:, width // 2:]
    assert lm.sum() > 100 and rm.sum() > 30
    assert left[lm].mean() > right[rm].mean() + 0.1
    # Flat and facing the camera: (0, 0, 1) . light, with ambient 0.25.
    light = np.array([0.3, 0.3, 1.0]) / np.linalg.norm([0.3, 0.3, 1.0])
    assert torch.allclose(left[lm], torch.tensor(0.25 + 0.75 * light[2], dtype=torch.float32), atol=1e-5)
    # The winding does not matter: normals are turned toward the camera.
    flipped, _ = render_grey(verts, both.flip(1), height, width)
    assert torch.allclose(flipped[0], image, atol=1e-6)


def test_render_grey_ambient_only_when_facing_away_from_light():
    plane, faces = grid_mesh(2, 2, -0.5, -0.5, 0.5, 0.5)
    image, mask = render_grey(plane, faces, 20, 20, light_dir=(0.0, 0.0, -1.0), ambient=0.3)
    assert torch.allclose(image[mask], torch.tensor(0.3))


def test_overlay_only_changes_masked_pixels():
    rng = np.random.default_rng(5)
    photo = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    render = rng.uniform(0, 1, (12, 16, 3)).astype(np.float32)
    mask = np.zeros((12, 16), bool)
    mask[3:9, 4:10] = True
    out = overlay(photo, render, mask, alpha=0.6)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    assert np.array_equal(out[~mask], photo[~mask])
    expected = np.rint(0.4 * photo[mask] + 0.6 * render[mask] * 255)
    assert np.abs(out[mask].astype(int) - expected).max() <= 1
    as_uint8 = overlay(photo, (render * 255).round().astype(np.uint8), mask, alpha=1.0)
    assert np.array_equal(as_uint8[mask], (render[mask] * 255).round().astype(np.uint8))
    assert np.array_equal(overlay(photo, render, mask, alpha=0.0), photo)
