"""Measure how MediaPipe sees the face model's jaw: the detector response that FaceFitter reads with.

MediaPipe's landmarks follow an opening jaw only part of the way: on exact SynthTalk renders the
chin it finds drops about half as far as the face model's ``jawOpen`` moves it, while the lips
follow almost fully. Fitted with the model's own ``jawOpen``, a detected open mouth is explained by
less jaw plus ``mouthLowerDown``, ``mouthRollLower`` and ``jawForward`` (a true 0.6 reads as 0.37).
The response is the displacement per unit ``jawOpen`` that the detector reports, in model space:
SynthTalk frames (seed-7 identities 12-35, which no model was trained on, random clip frames, half
of them with the mouth opened to 0.3-0.8) are rendered, detected, mapped to model space with their
exact pose, and the residual against the model's prediction is regressed on the true coefficients
jointly (a ridge pulling every blendshape's correction towards 0, plus a constant for the
detector's neutral offset). Only the jaw's correction is kept: it is the one measured to help.

Writes ``src/mimaface/assets/reader_response.npz`` and prints the reading on identities 0-11
(held out from the calibration) with and without it. Run: ``python scripts/calibrate_reader.py``
(about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mimaface.errors import MimafaceError
from mimaface.face3d.camera import pixels_to_normalized
from mimaface.face3d.fitting import RESPONSE_ASSET, FaceFitter, FitConfig
from mimaface.face3d.landmarks import detect_face
from mimaface.face3d.model import NUM_VERTICES, FaceModel
from mimaface.face3d.pose import umeyama
from mimaface.files import write_npz
from mimaface.synthtalk.generator import SynthConfig, clip_motion, make_identity
from mimaface.synthtalk.scene import SceneRenderer

REPO = Path(__file__).resolve().parents[1]
SIZE = 512
CALIBRATED = ("jawOpen",)
RIDGE = 30.0  # pulls each blendshape's correction towards 0 (in squared-coefficient units of the frame count)


def detected_frames(model: FaceModel, identities: range, clips: int, per_clip: int, seed: int) -> dict:
    """Rendered SynthTalk frames with their exact coefficients and MediaPipe's landmarks."""
    config, rng = SynthConfig(size=SIZE, seed=7), np.random.default_rng(seed)
    jaw = model.expression_names.index("jawOpen")
    rows = {"shape": [], "pose": [], "expression": [], "landmarks": []}
    for index in tqdm(identities, desc="rendering and detecting", unit="identity"):
        identity = make_identity(config, index, model)
        renderer = SceneRenderer(identity, SIZE, model)
        for clip in range(clips):
            motion = clip_motion(config, identity, clip, model)
            for frame in rng.choice(motion.num_frames, per_clip, replace=False):
                pose, expression = motion.pose[frame:frame + 1], motion.expression[frame:frame + 1].copy()
                if rng.random() < 0.5:  # open mouths are rare in SynthTalk's clips
                    expression[0, jaw] = rng.uniform(0.3, 0.8)
                image = renderer.render(pose, expression, motion.gaze[frame:frame + 1])[0]
                try:
                    face = detect_face(image)
                except MimafaceError:
                    continue
                for key, value in (("shape", identity.shape), ("pose", pose[0]), ("expression", expression[0]),
                                   ("landmarks", face.landmarks.astype(np.float64))):
                    rows[key].append(value)
    return {key: np.array(value) for key, value in rows.items()}


def response(model: FaceModel, frames: dict) -> dict[str, np.ndarray]:
    """The detected displacement per unit coefficient of each calibrated blendshape (model space)."""
    expressions, residuals = frames["expression"], []
    for shape, expression, landmarks in zip(frames["shape"], expressions, frames["landmarks"]):
        mesh = pixels_to_normalized(landmarks, SIZE, SIZE)[:NUM_VERTICES]
        truth = model.vertices(shape, expression)
        rotation, translation, scale = umeyama(truth[None], mesh[None])
        in_model = np.einsum("tji,tnj->tni", rotation, mesh[None] - translation[:, None]) / scale[:, None, None]
        residuals.append(in_model[0] - truth)
    residuals = np.array(residuals).reshape(len(expressions), -1)
    design = np.concatenate([expressions, np.ones((len(expressions), 1))], 1)
    ridge = np.eye(design.shape[1]) * RIDGE
    ridge[-1, -1] = 0.0  # the constant is not pulled
    correction = np.linalg.solve(design.T @ design + ridge, design.T @ residuals).reshape(-1, NUM_VERTICES, 3)
    return {name: model.expression_basis[model.expression_names.index(name)] + correction[model.expression_names.index(name)]
            for name in CALIBRATED}


def reading_errors(fitter: FaceFitter, frames: dict) -> str:
    jaw = fitter.model.expression_names.index("jawOpen")
    pose, jaw_error, every = [], [], []
    for shape, truth_pose, expression, landmarks in zip(frames["shape"], frames["pose"], frames["expression"],
                                                        frames["landmarks"]):
        fit = fitter.fit(landmarks[None], SIZE, SIZE, identity=shape, smooth=False)
        pose.append(np.abs(fit.pose[0, :3] - truth_pose[:3]).mean())
        jaw_error.append(fit.expression[0, jaw] - expression[jaw])
        every.append(np.abs(fit.expression[0] - expression).mean())
    jaw_error, opened = np.array(jaw_error), frames["expression"][:, jaw] > 0.3
    return (f"pose error {np.mean(pose):.2f}°, jawOpen error {np.abs(jaw_error).mean():.3f} (open mouths: bias "
            f"{jaw_error[opened].mean():+.3f}), mean expression error {np.mean(every):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=REPO / "src" / "mimaface" / "assets" / RESPONSE_ASSET)
    args = parser.parse_args()
    model = FaceModel.load()
    calibration = detected_frames(model, range(12, 36), clips=3, per_clip=10, seed=1)
    responses = response(model, calibration)
    write_npz(args.output, {"names": np.array(CALIBRATED), "frames": np.int64(len(calibration["expression"])),
                            **{f"model_{name}": model.expression_basis[model.expression_names.index(name)]
                               .astype(np.float32) for name in CALIBRATED},
                            **{f"detected_{name}": value.astype(np.float32) for name, value in responses.items()}})
    print(f"{args.output}: from {len(calibration['expression'])} frames of 24 identities")
    held_out = detected_frames(model, range(12), clips=2, per_clip=6, seed=0)
    print(f"held-out identities 0-11, {len(held_out['expression'])} frames:")
    print("  model's jawOpen:   ", reading_errors(FaceFitter(model, FitConfig(detector_response=False)), held_out))
    print("  detector response: ", reading_errors(FaceFitter(model), held_out))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
