"""The mesh-warp engine on real photos: identity kept, pose and expression followed, contact sheets.

For every photo that ships in an installable package (scikit-image's astronaut, matplotlib's
Grace Hopper, the insightface wheel's images; ``bundled_photos`` of build_face_model.py), one
face each (the largest), and a set of motions relative to the photo's own fitted coefficients
(head turns and tilts up to 15°, an open mouth, a blink, a look aside):

* CSIM: dlib's face-recognition embedding of the output against the source crop's (cosine);
* pose error: the output re-extracted by face3d (MediaPipe + fitting, the source's identity
  held fixed) against the pose asked for (mean of |yaw|, |pitch|, |roll| errors, degrees);
* jawOpen error: the same re-extraction against the jawOpen asked for;
* lip-gap error: how much the detected inner-lip opening (landmarks 13-14) changed from the
  source's, against how much the mesh's changed, in pixels of the crop (the change, so that the
  fitted mesh's own few-pixel offset from the detection cancels). It separates the warp from the
  reading: the fit can explain an open mouth by mouthLowerDown and jawForward instead of jawOpen
  while the lips are where they were asked to be.

The reader itself has a floor: a control on SynthTalk (``--control`` identities, default 8), where
the same motions are rendered exactly (the ground truth) and also warped from the identity's
frontal render with its exact coefficients, both read by the same face3d, separates what the warp
gets wrong from what the reader misreads (e.g. it reads a true jawOpen 0.6 as about 0.4).

Writes ``docs/warp/quality.md`` (the table the README quotes), ``docs/warp/sheet_*.png`` (contact
sheets: a real person talking, blinking, turning, looking around), ``docs/warp/limits.png``
(far head turns) and ``docs/warp/limits_near_face.png`` (hands near the face, an open-mouth
source; with ``--limit-photos DIR`` from ``scripts/fetch_limit_photos.sh DIR`` also a goatee and
glasses, from Debian's opencv-doc). Run: ``python scripts/warp_quality.py [--size 512] [--limit-photos DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from build_face_model import bundled_photos
from mimaface.demo import asset_path
from mimaface.errors import MimafaceError
from mimaface.evaluation.face_identity import FaceIdentityEncoder, csim
from mimaface.face3d.camera import normalized_to_pixels
from mimaface.face3d.coefficients import MotionCoefficients, motion_from_json
from mimaface.face3d.fitting import FaceFitter
from mimaface.face3d.landmarks import detect_face
from mimaface.figures import image_grid
from mimaface.pipelines.pipeline import to_uint8
from mimaface.pipelines.retarget import retarget
from mimaface.pipelines.source import SourceFace, prepare_source
from mimaface.synthtalk.generator import SynthConfig, clip_motion, make_identity
from mimaface.synthtalk.scene import SceneRenderer
from mimaface.warp import MeshWarpPipeline

REPO = Path(__file__).resolve().parents[1]

# name -> (pose change [yaw, pitch, roll] in degrees, {blendshape: value}, gaze change)
MOTIONS = {
    "yaw +15": ((15, 0, 0), {}, 0.0),
    "yaw -15": ((-15, 0, 0), {}, 0.0),
    "pitch +10": ((0, 10, 0), {}, 0.0),
    "pitch -10": ((0, -10, 0), {}, 0.0),
    "roll +10": ((0, 0, 10), {}, 0.0),
    "jawOpen 0.6": ((0, 0, 0), {"jawOpen": 0.6}, 0.0),
    "blink": ((0, 0, 0), {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, 0.0),
    "look left": ((0, 0, 0), {}, 0.15),
    "yaw +10, jawOpen 0.4": ((10, 0, 0), {"jawOpen": 0.4}, 0.0),
}
FAR_TURNS = (-45, -30, -20, 20, 30, 45)
# Sources that show a limit: (photo, face index, crop scale (animate's), label); columns: motions.
NEAR_FACE = (("insightface/t1.jpg", 1, "cards held beside the chin"),
             ("insightface/t1.jpg", 3, "a hand with a chip below the chin"),
             ("skimage/astronaut", None, "a source with parted lips"))
# From scripts/fetch_limit_photos.sh: (file, crop box of the photo to use or None, label).
LIMIT_PHOTOS = (("opencv_face_swap.jpg", None, "a goatee and moustache"),
                ("opencv_gapi_beautification.jpg", (0, 0, 387, 580), "glasses"))
NEAR_FACE_MOTIONS = {**{m: MOTIONS[m] for m in ("yaw +15", "yaw -15", "pitch +10", "jawOpen 0.6")},
                     "mouth closed": ((0, 0, 0), {"jawOpen": 0.0}, 0.0)}
SHEET_TILE = 200  # contact-sheet tiles (pixels)


def moved(source: MotionCoefficients, rotation, blendshapes: dict[str, float], gaze: float) -> MotionCoefficients:
    """The source's one frame with its head turned by ``rotation``, those blendshapes set, the irises moved."""
    pose, expression, gazes = source.pose.copy(), source.expression.copy(), source.gaze.copy()
    pose[0, :3] += rotation
    for name, value in blendshapes.items():
        expression[0, list(source.expression_names).index(name)] = value
    gazes[0, [0, 2]] += gaze
    return dataclasses.replace(source, pose=pose, expression=expression, gaze=gazes)


UPPER_LIP, LOWER_LIP = 13, 14  # inner-lip midpoints of the face mesh


def read(fitter: FaceFitter, image: np.ndarray, identity: np.ndarray):
    """face3d's reading of one image with a known identity, and its detected inner-lip gap in pixels
    (None when no face is found)."""
    try:
        face = detect_face(image)
    except MimafaceError:
        return None
    h, w = image.shape[:2]
    fit = fitter.fit(face.landmarks[None].astype(np.float64), w, h, identity=identity, smooth=False)
    return fit, float(face.landmarks[LOWER_LIP, 1] - face.landmarks[UPPER_LIP, 1])


def target_lip_gap(fitter: FaceFitter, motion: MotionCoefficients) -> float:
    """The inner-lip gap of the motion's own mesh (pixels of its crop)."""
    width, height = motion.image_size
    points = normalized_to_pixels(fitter.model.landmarks(motion.pose[0], motion.identity, motion.expression[0],
                                                         motion.gaze[0]), width, height)
    return float(points[LOWER_LIP, 1] - points[UPPER_LIP, 1])


def measure(engine: MeshWarpPipeline, source: SourceFace, encoder: FaceIdentityEncoder, fitter: FaceFitter):
    """Per motion: (output crop, CSIM, pose error, jawOpen error, lip-gap error in pixels)."""
    names = list(source.coefficients.expression_names)
    jaw = names.index("jawOpen")
    reference = encoder.embed(source.crop)[None]
    source_gap = read(fitter, source.crop, source.coefficients.identity)[1] - target_lip_gap(fitter, source.coefficients)
    rows = {}
    for name, (rotation, blendshapes, gaze) in MOTIONS.items():
        motion = moved(source.coefficients, rotation, blendshapes, gaze)
        frame = to_uint8(engine(source.crop, motion, source_coefficients=source.coefficients).frames)[0]
        reading = read(fitter, frame, source.coefficients.identity)
        similarity = float(csim(encoder.embed(frame)[None], reference)[0])
        if reading is None:
            rows[name] = (frame, similarity, float("nan"), float("nan"), float("nan"))
            continue
        fit, gap = reading
        pose_error = float(np.abs(fit.pose[0, :3] - motion.pose[0, :3]).mean())
        rows[name] = (frame, similarity, pose_error, float(abs(fit.expression[0, jaw] - motion.expression[0, jaw])),
                      abs(gap - target_lip_gap(fitter, motion) - source_gap))
    return rows


def synthtalk_control(engine: MeshWarpPipeline, fitter: FaceFitter, identities: int, size: int) -> dict:
    """Per motion and kind ("truth": the exact render, "warp"): (pose error, jawOpen error) of each SynthTalk
    identity read (N,2) (frontal, neutral sources of the seed-7 set, which no model was trained on)."""
    config = SynthConfig(size=size, seed=7)
    jaw = list(fitter.model.expression_names).index("jawOpen")
    errors = {name: {"truth": [], "warp": []} for name in MOTIONS}
    for index in range(identities):
        identity = make_identity(config, index, fitter.model)
        first = clip_motion(config, identity, 0, fitter.model).select([0])
        pose = first.pose.copy()
        pose[0, :3] = 0.0
        source = dataclasses.replace(first, pose=pose, expression=np.zeros_like(first.expression),
                                     gaze=np.zeros_like(first.gaze), image_size=(size, size), landmarks=None)
        renderer = SceneRenderer(identity, size, fitter.model)
        source_image = renderer.render(source.pose, source.expression, source.gaze)[0]
        for name, motion_change in MOTIONS.items():
            motion = moved(source, *motion_change)
            truth = renderer.render(motion.pose, motion.expression, motion.gaze)[0]
            warped = to_uint8(engine(source_image, motion, source_coefficients=source).frames)[0]
            for kind, image in (("truth", truth), ("warp", warped)):
                reading = read(fitter, image, identity.shape)
                if reading is not None:
                    fit = reading[0]
                    errors[name][kind].append((np.abs(fit.pose[0, :3] - motion.pose[0, :3]).mean(),
                                               abs(fit.expression[0, jaw] - motion.expression[0, jaw])))
        print(f"SynthTalk control: identity {index + 1}/{identities}", flush=True)
    return {name: {kind: np.asarray(values).reshape(-1, 2) for kind, values in row.items()}
            for name, row in errors.items()}


def reader_resolution(control: dict) -> str:
    """How often the reader puts a single image within 2° of its pose, exact renders beside warps:
    the per-cell pose target can be no finer than the truth's own spread."""
    parts = []
    for kind in ("truth", "warp"):
        cells = np.concatenate([row[kind][:, 0] for name, row in control.items() if name != "look left"])
        parts.append(f"{kind}: {np.mean(cells <= 2.0):.0%} of {len(cells)} within 2°, max {cells.max():.2f}°")
    return "Single images read within 2° of their pose (posed motions): " + "; ".join(parts)


def contact_sheet(engine: MeshWarpPipeline, source: SourceFace, path: Path, title: str) -> None:
    """talk.json (relative to the source) every few frames, then a blink, a turn and a look around."""
    talk = retarget(source.coefficients, motion_from_json(asset_path("talk.json")))
    frames = to_uint8(engine(source.crop, talk, source_coefficients=source.coefficients).frames)
    picks = np.linspace(0, len(frames) - 1, 8).round().astype(int)
    extra = [to_uint8(engine(source.crop, moved(source.coefficients, *MOTIONS[m]),
                             source_coefficients=source.coefficients).frames)[0]
             for m in ("blink", "yaw +15", "yaw -15", "pitch +10", "look left", "jawOpen 0.6")]
    small = lambda image: np.asarray(Image.fromarray(image).resize((SHEET_TILE, SHEET_TILE), Image.BICUBIC))  # noqa: E731
    image_grid([[small(f) for f in [source.crop] + [frames[i] for i in picks]],
                [small(f) for f in [source.crop] + extra]], path, row_labels=["talk.json", "blink, turns, gaze, jaw"],
               column_labels=["source"] + [f"frame {i}" for i in picks], title=title)


def limit_photos(folder: Path) -> dict[str, np.ndarray]:
    """The photos of :data:`LIMIT_PHOTOS` in ``folder`` (fetched by scripts/fetch_limit_photos.sh)."""
    photos = {}
    for name, box, _ in LIMIT_PHOTOS:
        if not (folder / name).is_file():
            raise SystemExit(f"{folder / name}: missing; run scripts/fetch_limit_photos.sh {folder}")
        with Image.open(folder / name) as image:
            photos[name] = np.asarray((image.crop(box) if box else image).convert("RGB"))
    return photos


def near_face_sheet(engine: MeshWarpPipeline, photos: dict[str, np.ndarray], size: int, path: Path,
                    extra: dict[str, np.ndarray]) -> None:
    """Hands and objects near the face, a source with an open mouth, and the ``extra`` limit photos (a
    beard, glasses), under the motions that show them."""
    rows, labels = [], []
    # The limit photos are tight portraits: a closer crop than animate's 3.0 keeps their faces readable.
    faces = [*((name, index, 3.0, label) for name, index, label in NEAR_FACE),
             *((name, None, 2.0, label) for name, _, label in LIMIT_PHOTOS if name in extra)]
    photos = {**photos, **extra}
    for name, index, crop_scale, label in faces:
        source = prepare_source(photos[name], size, face_index=index, crop_scale=crop_scale, name=name)
        frames = [to_uint8(engine(source.crop, moved(source.coefficients, *motion),
                                  source_coefficients=source.coefficients).frames)[0]
                  for motion in NEAR_FACE_MOTIONS.values()]
        rows.append([np.asarray(Image.fromarray(f).resize((SHEET_TILE, SHEET_TILE), Image.BICUBIC))
                     for f in [source.crop, *frames]])
        labels.append(label)
    image_grid(rows, path, row_labels=labels, column_labels=["source", *NEAR_FACE_MOTIONS],
               title="limits: hands and objects near the face, an open-mouth source, facial hair, glasses")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="crop size (default 512)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "warp")
    parser.add_argument("--control", type=int, default=8, help="SynthTalk identities of the reader control (default 8)")
    parser.add_argument("--limit-photos", type=Path, help="folder from scripts/fetch_limit_photos.sh (a beard, glasses)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engine = MeshWarpPipeline()
    encoder, fitter = FaceIdentityEncoder.load(), FaceFitter()
    table, sheets, skipped = [], 0, []
    limits_rows = []
    photos = bundled_photos([])
    extra = limit_photos(args.limit_photos) if args.limit_photos else {}
    near_face_sheet(engine, photos, args.size, args.out / "limits_near_face.png", extra)
    for name, photo in photos.items():
        try:
            source = prepare_source(photo, args.size, name=name)
            rows = measure(engine, source, encoder, fitter)
        except MimafaceError as error:  # no face, or one the warp refuses (turned too far)
            print(f"{name}: skipped ({error})")
            skipped.append(f"{name}: {error}")
            continue
        table.append((name, rows))
        print(name, {m: (round(r[1], 3), round(r[2], 2), round(r[3], 3)) for m, r in rows.items()}, flush=True)
        if sheets < 3:
            contact_sheet(engine, source, args.out / f"sheet_{sheets}.png", f"{name}: the mesh-warp engine")
            sheets += 1
        if len(limits_rows) < 2:
            limits_rows.append([source.crop] + [
                to_uint8(engine(source.crop, moved(source.coefficients, (yaw, 0, 0), {}, 0.0),
                                source_coefficients=source.coefficients).frames)[0] for yaw in FAR_TURNS])
    image_grid([[np.asarray(Image.fromarray(f).resize((SHEET_TILE, SHEET_TILE), Image.BICUBIC)) for f in row]
                for row in limits_rows], args.out / "limits.png",
               column_labels=["source"] + [f"yaw {y:+d}" for y in FAR_TURNS], title="far head turns (yaw added to the source's)")
    lines = ["| photo | " + " | ".join(MOTIONS) + " |", "| --- |" + " ---: |" * len(MOTIONS)]
    for name, rows in table:
        lines.append(f"| {name} | " + " | ".join(f"{r[1]:.3f} / {r[2]:.1f}° / {r[3]:.2f} / {r[4]:.1f}"
                                                  for r in rows.values()) + " |")
    every = np.array([[r[1:] for r in rows.values()] for _, rows in table])  # (photos, motions, 4)
    small = [i for i, m in enumerate(MOTIONS) if m != "look left"]
    summary = (f"{len(table)} faces x {len(MOTIONS)} motions. CSIM: mean {np.nanmean(every[..., 0]):.3f}, min "
               f"{np.nanmin(every[..., 0]):.3f}; pose error: mean {np.nanmean(every[:, small, 1]):.2f}°, max "
               f"{np.nanmax(every[:, small, 1]):.2f}°, within 2° in {int((every[:, small, 1] <= 2.0).sum())} of "
               f"{every[:, small, 1].size}; jawOpen error: mean {np.nanmean(every[..., 2]):.3f}, max "
               f"{np.nanmax(every[..., 2]):.3f}, within 0.1 in {int((every[..., 2] <= 0.1).sum())} of {every[..., 2].size}; lip-gap error: mean {np.nanmean(every[..., 3]):.1f} px, max "
               f"{np.nanmax(every[..., 3]):.1f} px; faces not found again: {int(np.isnan(every[..., 1]).sum())}")
    notes = "".join(f"\n- skipped {line}" for line in skipped)
    control = synthtalk_control(engine, fitter, args.control, args.size)
    control_lines = [(f"SynthTalk control ({args.control} identities, {args.size} px): the same motions rendered "
                      "exactly (truth) and warped from the frontal render, read by the same face3d\n"),
                     "| motion | pose error, truth | pose error, warp | jawOpen error, truth | jawOpen error, warp |",
                     "| --- | ---: | ---: | ---: | ---: |"]
    means = {name: {kind: cells.mean(0) for kind, cells in row.items()} for name, row in control.items()}
    control_lines += [f"| {name} | {row['truth'][0]:.2f}° | {row['warp'][0]:.2f}° | {row['truth'][1]:.2f} | {row['warp'][1]:.2f} |"
                      for name, row in means.items()]
    control_lines += ["", reader_resolution(control)]
    (args.out / "quality.md").write_text("Cells: CSIM (dlib) / pose error / jawOpen error / lip-gap error (px)\n\n" + "\n".join(lines)
                                         + f"\n\n{summary}\n{notes}\n\n" + "\n".join(control_lines) + "\n")
    print(summary)
    print("\n".join(control_lines))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
