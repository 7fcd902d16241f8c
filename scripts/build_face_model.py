"""Build ``src/mimaface/assets/face_model.npz``: topology and neutral mean shape of the face model.

What it does:

1. Topology: the 468-vertex MediaPipe face mesh. Its triangles are recovered from the edge
   list ``face_mesh_connections.FACEMESH_TESSELATION`` (every 3-clique of the edge graph is a
   triangle, except the few spurious cliques whose three edges would otherwise be shared by
   three triangles), oriented so that they face the camera. Region index sets (lips, eyes,
   brows, irises, oval, nose) come from the same module; the lips are split into upper and
   lower and into outer and inner contours.
2. Mean shape: 3D landmarks are detected on real photos that ship inside installable
   packages (scikit-image's astronaut and cameraman, matplotlib's Grace Hopper, the photos in
   the insightface wheel's ``data/images``), each photo also mirrored. The shapes are aligned
   by generalised Procrustes analysis (similarity transforms), averaged, made exactly
   left/right symmetric, and expressed in the head frame (x to the subject's left, y up, z
   towards the camera; origin at the centroid; unit = the distance between the cheek points
   234 and 454). Finally the lips are closed with the ``jawOpen`` jaw rotation (most of the
   photos smile with parted lips), so ``jawOpen = 0`` means a closed mouth.

Run: ``python scripts/build_face_model.py`` (needs only the project's dependencies and pip to
fetch the insightface wheel; ``--images`` adds photos of your own).
"""

from __future__ import annotations

import argparse
import collections
import importlib.resources
import itertools
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from mimaface.face3d.landmarks import LandmarkDetector
from mimaface.face3d.pose import umeyama
from mimaface.media import load_image

NUM_VERTICES = 468
# Symmetric anchor pairs (subject's right, subject's left): eye corners, mouth corners, cheeks.
ANCHOR_PAIRS = ((33, 263), (133, 362), (61, 291), (234, 454))
LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


def bundled_photos(extra: list[Path]) -> dict[str, np.ndarray]:
    """Real photos available offline from installed packages (plus ``extra``)."""
    import matplotlib
    import skimage.data

    photos = {
        "skimage/astronaut": skimage.data.astronaut(),
        "skimage/camera": load_image(skimage.data.camera()),
        "matplotlib/grace_hopper": load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "insightface==2.1"]
        if subprocess.run(cmd, check=False).returncode == 0:
            wheel = next(Path(tmp).glob("insightface-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for name in sorted(zf.namelist()):
                    if name.startswith("insightface/data/images/"):
                        out = Path(tmp) / Path(name).name
                        out.write_bytes(zf.read(name))
                        photos[f"insightface/{out.name}"] = load_image(out)
        else:
            print("warning: could not fetch the insightface wheel; building from the other photos")
    for path in extra:
        photos[str(path)] = load_image(path)
    return photos


def to_model_frame(landmarks_px: np.ndarray) -> np.ndarray:
    """Pixel landmarks (X right, Y down, Z away) -> right-handed (x right, y up, z towards camera)."""
    return landmarks_px[:NUM_VERTICES] * np.array([1.0, -1.0, -1.0])


def triangles_from_edges(edges: set[tuple[int, int]]) -> np.ndarray:
    edges = {tuple(sorted(e)) for e in edges}
    neighbours = collections.defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    cliques = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}
    uses = collections.Counter(e for t in cliques for e in itertools.combinations(t, 2))
    # A spurious clique surrounds a degree-3 vertex: all three of its edges are over-used.
    tris = [t for t in cliques if not all(uses[e] > 2 for e in itertools.combinations(t, 2))]
    return np.array(sorted(tris), dtype=np.int64)


def orient_towards_camera(triangles: np.ndarray, shape: np.ndarray) -> np.ndarray:
    a, b, c = (shape[triangles[:, i]] for i in range(3))
    facing = np.cross(b - a, c - a)[:, 2] >= 0
    return np.where(facing[:, None], triangles, triangles[:, [0, 2, 1]])


def head_rotation(shape: np.ndarray) -> np.ndarray:
    """Rotation taking ``shape`` into the head frame defined by the anchor pairs and the midline."""
    x: np.ndarray = sum(shape[left] - shape[right] for right, left in ANCHOR_PAIRS)
    x /= np.linalg.norm(x)
    y = shape[10] - shape[152]  # forehead minus chin
    y -= x * (x @ y)
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])


def mirror_permutation(shape: np.ndarray) -> np.ndarray:
    """Index of each vertex's left/right counterpart, by optimal matching of the reflected shape."""
    centred = (shape - shape.mean(0)) @ head_rotation(shape).T
    reflected = centred * np.array([-1.0, 1.0, 1.0])
    cost = np.linalg.norm(centred[:, None] - reflected[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    perm = cols[np.argsort(rows)]
    if not np.array_equal(perm[perm], np.arange(len(perm))):
        raise RuntimeError("mirror matching is not an involution")
    return perm


def mirrored(shape: np.ndarray, perm: np.ndarray) -> np.ndarray:
    return shape[perm] * np.array([-1.0, 1.0, 1.0])


def procrustes_mean(shapes: list[np.ndarray], iterations: int = 20) -> np.ndarray:
    mean = shapes[0] - shapes[0].mean(0)
    for _ in range(iterations):
        aligned = []
        for s in shapes:
            rot, trans, scale = umeyama(s, mean)
            aligned.append(scale * s @ rot.T + trans)
        new = np.mean(aligned, axis=0)
        new -= new.mean(0)
        new /= np.linalg.norm(new) / np.linalg.norm(mean)
        if np.abs(new - mean).max() < 1e-9:
            break
        mean = new
    return mean


def normalise(shape: np.ndarray, perm: np.ndarray) -> np.ndarray:
    shape = (shape - shape.mean(0)) @ head_rotation(shape).T
    shape = 0.5 * (shape + mirrored(shape, perm))  # exact symmetry about x = 0
    shape -= shape.mean(0)
    return shape / np.linalg.norm(shape[454] - shape[234])


def close_mouth(shape: np.ndarray, perm: np.ndarray, regions: dict[str, np.ndarray], gap: float = 0.002) -> np.ndarray:
    """Close the lips (most photos smile with parted lips) with the jaw rotation of ``jawOpen``."""
    from mimaface.face3d.blendshapes import Anatomy, build_expression_basis

    names, basis = build_expression_basis(Anatomy(shape, perm, regions))
    jaw = basis[names.index("jawOpen")]
    opening = shape[13, 1] - shape[14, 1]
    per_unit = jaw[13, 1] - jaw[14, 1]
    return shape + (gap - opening) / per_unit * jaw


def regions(shape: np.ndarray) -> dict[str, np.ndarray]:
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def idx(conns) -> np.ndarray:
        return np.array(sorted({i for e in conns for i in e}), dtype=np.int64)

    return {
        "lips": idx(fmc.FACEMESH_LIPS),
        "lips_outer_upper": np.array(LIPS_OUTER_UPPER),
        "lips_outer_lower": np.array(LIPS_OUTER_LOWER),
        "lips_inner_upper": np.array(LIPS_INNER_UPPER),
        "lips_inner_lower": np.array(LIPS_INNER_LOWER),
        "left_eye": idx(fmc.FACEMESH_LEFT_EYE),
        "right_eye": idx(fmc.FACEMESH_RIGHT_EYE),
        "left_eyebrow": idx(fmc.FACEMESH_LEFT_EYEBROW),
        "right_eyebrow": idx(fmc.FACEMESH_RIGHT_EYEBROW),
        "left_iris": idx(fmc.FACEMESH_LEFT_IRIS),
        "right_iris": idx(fmc.FACEMESH_RIGHT_IRIS),
        "face_oval": idx(fmc.FACEMESH_FACE_OVAL),
        "nose": idx(fmc.FACEMESH_NOSE),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="*", type=Path, default=[], help="extra photos to include")
    default_out = Path(str(importlib.resources.files("mimaface") / "assets" / "face_model.npz"))
    parser.add_argument("-o", "--output", type=Path, default=default_out)
    args = parser.parse_args()

    from mediapipe.python.solutions import face_mesh_connections as fmc

    photos = bundled_photos(args.images)
    shapes, sources = [], []
    with LandmarkDetector(max_faces=16) as detector:
        for name, image in photos.items():
            for flip in (False, True):
                img = image[:, ::-1].copy() if flip else image
                # A mirrored photo is a photo of the mirror-image face: one more sample.
                faces = detector.detect(img)
                shapes += [to_model_frame(face.landmarks) for face in faces]
                sources.append({"photo": name, "mirrored": flip, "faces": len(faces)})
                print(f"{name}{' (mirrored)' if flip else ''}: {len(faces)} face(s)")
    if len(shapes) < 4:
        raise SystemExit(f"only {len(shapes)} faces found; need at least 4")

    perm = mirror_permutation(procrustes_mean(shapes))
    # Mirror images of the faces make the estimate symmetric in expectation; normalise() makes it exact.
    mean = normalise(procrustes_mean(shapes + [mirrored(s, perm) for s in shapes]), perm)
    mean = close_mouth(mean, perm, regions(mean))
    triangles = orient_towards_camera(triangles_from_edges(set(fmc.FACEMESH_TESSELATION)), mean)

    residuals = []
    for s in shapes:
        rot, trans, scale = umeyama(s, mean)
        residuals.append(np.sqrt(((scale * s @ rot.T + trans - mean) ** 2).sum(-1).mean()))
    meta = {
        "sources": sources,
        "num_faces": len(shapes),
        "procrustes_rms_residual": float(np.mean(residuals)),
        "units": "distance between vertices 234 and 454 (cheeks) = 1",
        "frame": "x: subject's left (image right), y: up, z: towards the camera",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.output,
        mean_shape=mean.astype(np.float32),
        triangles=triangles.astype(np.int32),
        mirror=perm.astype(np.int32),
        metadata=np.array(json.dumps(meta)),
        **{f"region_{k}": v.astype(np.int32) for k, v in regions(mean).items()},
    )
    print(f"wrote {args.output}: {len(shapes)} faces, {len(triangles)} triangles, "
          f"mean Procrustes residual {meta['procrustes_rms_residual']:.4f}")


if __name__ == "__main__":
    main()
