"""The face model asset and its semantic bases."""

import numpy as np
import pytest

from mimaface.face3d.blendshapes import ANTAGONISTS, similarity_tangents
from mimaface.face3d.pose import apply_pose, euler_to_matrix, matrix_to_euler, umeyama

# Apple ARKit's 52 blendshape names: every expression name must be one of them.
ARKIT = set("""browDownLeft browDownRight browInnerUp browOuterUpLeft browOuterUpRight cheekPuff cheekSquintLeft
cheekSquintRight eyeBlinkLeft eyeBlinkRight eyeLookDownLeft eyeLookDownRight eyeLookInLeft eyeLookInRight eyeLookOutLeft
eyeLookOutRight eyeLookUpLeft eyeLookUpRight eyeSquintLeft eyeSquintRight eyeWideLeft eyeWideRight jawForward jawLeft
jawOpen jawRight mouthClose mouthDimpleLeft mouthDimpleRight mouthFrownLeft mouthFrownRight mouthFunnel mouthLeft
mouthLowerDownLeft mouthLowerDownRight mouthPressLeft mouthPressRight mouthPucker mouthRight mouthRollLower
mouthRollUpper mouthShrugLower mouthShrugUpper mouthSmileLeft mouthSmileRight mouthStretchLeft mouthStretchRight
mouthUpperUpLeft mouthUpperUpRight noseSneerLeft noseSneerRight tongueOut""".split())


def test_topology(model):
    assert model.mean_shape.shape == (468, 3)
    assert model.triangles.shape == (852, 3)
    assert model.triangles.min() == 0 and model.triangles.max() == 467
    # Every undirected edge borders at most two triangles (a manifold surface).
    edges = np.sort(model.triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() == 2
    a, b, c = (model.mean_shape[model.triangles[:, i]] for i in range(3))
    assert (np.cross(b - a, c - a)[:, 2] >= 0).all()  # oriented towards the camera


def test_mean_shape_is_symmetric_and_normalised(model):
    mirror = model.mirror
    assert np.array_equal(mirror[mirror], np.arange(468))
    reflected = model.mean_shape[mirror] * np.array([-1, 1, 1])
    np.testing.assert_allclose(reflected, model.mean_shape, atol=1e-6)
    assert np.linalg.norm(model.mean_shape[454] - model.mean_shape[234]) == pytest.approx(1.0, abs=1e-6)
    # Anatomy in the head frame: the subject's left eye is at +x, the forehead above the chin,
    # the nose tip in front of the cheeks.
    assert model.mean_shape[263, 0] > 0 > model.mean_shape[33, 0]
    assert model.mean_shape[10, 1] > model.mean_shape[1, 1] > model.mean_shape[152, 1]
    assert model.mean_shape[1, 2] > model.mean_shape[234, 2] + 0.3


def test_expression_names_are_arkit_and_cover_the_face(model):
    names = set(model.expression_names)
    assert len(names) >= 16 and names <= ARKIT
    for prefix in ("jaw", "mouth", "cheek", "brow", "eyeBlink"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_right_shapes_mirror_left_shapes(model):
    names = model.expression_names
    for i, name in enumerate(names):
        if name.endswith("Left"):
            right = model.expression_basis[names.index(name[:-4] + "Right")]
            mirrored = model.expression_basis[i][model.mirror] * np.array([-1, 1, 1])
            np.testing.assert_allclose(right, mirrored, atol=1e-9)


# jawLeft/mouthLeft name a direction (both sides move towards the subject's left), not a side.
DIRECTION_NAMED = {name for pair in ANTAGONISTS for name in pair}
REGION_OF = {
    "jaw": (152, 14, 17),  # chin, lower lip
    "mouth": (61, 291, 0, 17, 13, 14),
    "cheek": (50, 280, 205, 425),
    "brow": (105, 334, 107, 336, 70, 300),
    "eye": (159, 145, 386, 374),
    "nose": (129, 358, 48, 278),
}


@pytest.mark.parametrize("prefix", sorted(REGION_OF))
def test_blendshapes_move_the_region_their_name_says(model, prefix):
    shape = model.mean_shape
    for name, field in zip(model.expression_names, model.expression_basis):
        if not name.startswith(prefix):
            continue
        magnitude = np.linalg.norm(field, axis=1)
        centre = (magnitude[:, None] * shape).sum(0) / magnitude.sum()
        # The motion's weighted centre lies in the named region (nearer to it than to any other).
        side = 1 if name.endswith("Left") else -1 if name.endswith("Right") else 0

        def region_centre(indices):
            pts = shape[list(indices)]
            return (pts[pts[:, 0] * side >= -1e-6] if side else pts).mean(0)[:2]

        distances = {r: np.linalg.norm(region_centre(i) - centre[:2]) for r, i in REGION_OF.items()}
        assert distances[prefix] < 0.25, (name, distances)
        assert distances[prefix] <= 1.5 * min(distances.values()), (name, distances)
        # Far from the region nothing moves: the top of the forehead for lower-face shapes, the chin for upper-face ones.
        far = 10 if prefix in ("jaw", "mouth", "cheek", "nose") else 152
        assert magnitude[far] < 0.02 * magnitude.max(), name
        if name.endswith("Left") and name not in DIRECTION_NAMED:
            assert magnitude[shape[:, 0] > 0.02].sum() > 3 * magnitude[shape[:, 0] < -0.02].sum(), name


def test_blendshape_directions(model):
    def move(name, index):
        return model.expression_basis[model.expression_names.index(name)][index]

    assert move("jawOpen", 152)[1] < -0.1  # chin down
    assert move("jawOpen", 14)[1] < -0.1 and abs(move("jawOpen", 13)[1]) < 1e-6  # lower lip only
    assert move("mouthSmileLeft", 291)[1] > 0.03 and move("mouthSmileLeft", 291)[0] > 0  # corner up and out
    assert move("mouthFrownRight", 61)[1] < -0.02
    assert move("browInnerUp", 107)[1] > 0.03 and move("browInnerUp", 336)[1] > 0.03
    assert move("browDownLeft", 334)[1] < -0.02
    assert move("eyeBlinkLeft", 386)[1] < -0.03 and abs(move("eyeBlinkLeft", 159)[1]) < 1e-3
    assert move("eyeWideRight", 159)[1] > 0.01
    assert move("mouthPucker", 0)[2] > 0.03  # lips forward
    assert move("jawLeft", 152)[0] > 0.05  # towards the subject's left (+x)


def test_identity_basis_is_free_of_similarity_transforms(model):
    tangents = similarity_tangents(model.mean_shape)
    flat = model.identity_basis.reshape(model.num_identities, -1)
    assert np.abs(flat @ tangents.T).max() < 1e-9
    assert {"faceWidth", "faceLength", "jawWidth", "noseWidth", "eyeSpacing", "lipThickness"} <= set(model.identity_names)
    # Full rank together with the expressions: a subject's shape and motion are separable.
    both = np.concatenate([flat, model.expression_basis.reshape(model.num_expressions, -1)])
    unique = both[[i for i, n in enumerate(model.identity_names + model.expression_names) if n not in ("jawRight", "mouthRight")]]
    assert np.linalg.matrix_rank(unique) == len(unique)


def test_euler_round_trip_and_conventions():
    rng = np.random.default_rng(1)
    angles = np.stack([rng.uniform(-80, 80, 50), rng.uniform(-80, 80, 50), rng.uniform(-170, 170, 50)], 1)
    rot = euler_to_matrix(*angles.T)
    np.testing.assert_allclose(np.stack(matrix_to_euler(rot), 1), angles, atol=1e-9)
    nose = np.array([[0.0, 0.0, 1.0]])
    assert apply_pose(nose, np.array([30, 0, 0, 0, 0, 1]))[0, 0] > 0.4  # yaw > 0: towards image right
    assert apply_pose(nose, np.array([0, 30, 0, 0, 0, 1]))[0, 1] > 0.4  # pitch > 0: up
    right = np.array([[1.0, 0.0, 0.0]])
    assert apply_pose(right, np.array([0, 0, 30, 0, 0, 1]))[0, 1] > 0.4  # roll > 0: counter-clockwise


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(40, 3))
    rot = euler_to_matrix(25.0, -10.0, 40.0)
    dst = 1.7 * src @ rot.T + np.array([0.3, -0.2, 0.5])
    r, t, s = umeyama(src, dst)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, [0.3, -0.2, 0.5], atol=1e-9)
    assert s == pytest.approx(1.7)
