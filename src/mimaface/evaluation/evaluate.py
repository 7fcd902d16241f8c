"""``mimaface evaluate``: a trained model over a test split, the paper's Table 1 protocol.

Same-identity: the source is a clip's first frame and the clip's own motion drives it; the clip
is the ground truth. Cross-identity: every clip is driven by a clip of another identity (a fixed
random pairing, PIRenderer-style, from ``seed``), in absolute mode with the source's face shape;
on SynthTalk the ground truth of that is rendered exactly (the source identity performing the
driving motion), so PSNR/SSIM are measured in both modes; real videos have none for it.

Per pair of (source, driving): PSNR and SSIM against the ground truth, LPIPS when its weights
are given; pose / expression / gaze error against the coefficients asked for, CSIM to the source,
and a Fréchet distance of features of generated and real frames, all read on SynthTalk by the
SynthTalk estimator ("-est"; its error on the ground truth itself is the floor) and on real faces
by face3d and dlib's face-recognition ResNet ("-dlib"); FID itself when the Inception weights are
given; clip-boundary consistency and colour drift. Reference rows: the ground truth, the source
held still, and I_R alone.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimaface import files
from mimaface.data.clipstore import ClipRef, list_clips, read_dataset_info
from mimaface.errors import InputError
from mimaface.evaluation.estimator import FaceEstimator, FaceReading, estimator_record
from mimaface.evaluation.metrics import boundary_consistency, colour_drift, psnr, ssim
from mimaface.evaluation.perceptual import (
    LPIPS,
    FIDInceptionV3,
    fid,
    frechet_distance_of_features,
)
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.pipelines.engines import Engine, choose_engine
from mimaface.pipelines.options import SamplingOptions
from mimaface.pipelines.pipeline import GeneratedVideo
from mimaface.pipelines.retarget import RetargetConfig, retarget
from mimaface.pipelines.settings import BUNDLED_MODEL
from mimaface.pipelines.source import aligned_source
from mimaface.synthtalk import SynthConfig, render_identity

MODES = ("same", "cross")
GENERATED = "generated"


@dataclass
class EvaluateOptions:
    engine: str = "diffusion"  # or "warp" (the learning-free engine; no checkpoint)
    split: str = "test"
    modes: tuple[str, ...] = MODES
    num_inference_steps: int = SamplingOptions.num_inference_steps
    guidance_scale: float = SamplingOptions.guidance_scale
    seed: int = SamplingOptions.seed  # the noise and the cross-identity pairing
    use_ica: bool = SamplingOptions.use_ica
    max_clips: int | None = None  # the first N clips of the split (all when None)
    estimator: str | Path | None = None  # None = the bundled SynthTalk estimator
    lpips_net: str = "alex"
    lpips_backbone: str | Path | None = None
    lpips_linear: str | Path | None = None
    fid_weights: str | Path | None = None
    figures: int = 4  # per-pair figures written for the first N pairs of each mode


@dataclass
class Pair:
    mode: str
    source: ClipRef
    driving: ClipRef
    source_frame: np.ndarray  # (S, S, 3)
    source_motion: MotionCoefficients  # the source frame's own coefficients (one frame)
    motion: MotionCoefficients  # what the model is asked to perform (source identity, crop frame)
    truth: np.ndarray | None  # (T, S, S, 3)

    @property
    def reference(self) -> np.ndarray:
        """The real frames generated ones are compared with as a set (FD): the truth, else the driving clip."""
        return self.truth if self.truth is not None else np.asarray(self.driving.frames())

    @property
    def name(self) -> str:
        return f"{self.mode}: {self.source.identity}/{self.source.clip} <- {self.driving.identity}/{self.driving.clip}"


def make_pairs(root: Path, options: EvaluateOptions) -> list[Pair]:
    """The evaluation pairs of every mode, with their ground truth (None where there is none: a
    cross-identity pair of real videos)."""
    info = read_dataset_info(root)
    recipe = SynthConfig(**info["config"]) if info.get("source") == "synthtalk" else None
    clips = list_clips(root, options.split)[: options.max_clips]
    if len({c.identity for c in clips}) < (2 if "cross" in options.modes else 1):
        raise InputError(f"{root}/{options.split}: cross-identity pairs need clips of at least two identities")
    pairs = []
    for mode in options.modes:
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r} (use same, cross or both)")
        drivers = _cross_pairing(clips, options.seed) if mode == "cross" else clips
        for clip, driver in zip(clips, drivers):
            own = clip.motion()
            source_frame = np.asarray(clip.frames()[0])
            first = dataclasses.replace(own.select([0]), landmarks=None, extra={})
            if mode == "same":
                motion, truth = own, np.asarray(clip.frames())
            else:
                motion = retarget(first, driver.motion(), RetargetConfig(mode="absolute"))
                truth = (render_identity(recipe, int(clip.identity.removeprefix("id")), motion)
                         if recipe is not None else None)
            pairs.append(Pair(mode, clip, driver, source_frame, first, motion, truth))
    return pairs


def _cross_pairing(clips: list[ClipRef], seed: int) -> list[ClipRef]:
    """For each clip a driving clip of another identity, drawn with a seeded generator."""
    rng = np.random.default_rng(seed)
    return [others[int(rng.integers(len(others)))]
            for clip in clips for others in [[c for c in clips if c.identity != clip.identity]]]


class EstimatorReader:
    """SynthTalk faces: the trained estimator reads motion, identity and features."""

    name = "est"

    def __init__(self, folder: str | Path | None) -> None:
        self.estimator = FaceEstimator.from_pretrained(folder)
        self.record = estimator_record(folder)

    def read(self, frames: np.ndarray, identity: np.ndarray) -> FaceReading:
        return self.estimator.predict(frames)


class RealFaceReader:
    """Real faces: face3d (MediaPipe landmarks, fitted with the source's identity held fixed) reads
    the motion; dlib's face-recognition ResNet the identity, and its descriptors are the features."""

    name = "dlib"

    def __init__(self) -> None:
        from mimaface.evaluation.face_identity import FaceIdentityEncoder
        from mimaface.face3d.fitting import FaceFitter

        self.fitter = FaceFitter()
        self.encoder = FaceIdentityEncoder.load()
        self.record: dict = {}

    def read(self, frames: np.ndarray, identity: np.ndarray) -> FaceReading:
        from mimaface.face3d.landmarks import track_faces

        n, height, width = frames.shape[:3]
        tracked = track_faces(list(frames), progress=False)
        found = np.asarray(tracked.found, bool)
        m = self.fitter.model
        pose, expression, gaze = np.full((n, 6), np.nan), np.full((n, m.num_expressions), np.nan), np.full((n, 4), np.nan)
        if found.any():
            fit = self.fitter.fit(tracked.landmarks[found].astype(np.float64), width, height, identity=identity,
                                  smooth=False)
            pose[found], expression[found], gaze[found] = fit.pose, fit.expression, fit.gaze
        descriptors = self.encoder.embed_many(frames)
        unit = descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)
        return FaceReading(pose, expression, gaze, unit, descriptors)


class GeneratedVideos:
    """The generated frames of every pair, kept in ``REPORT/generated/`` as they are made, so an
    interrupted evaluation resumes where it stopped and a re-run re-measures without generating.
    ``key`` names what determines them (checkpoint, data, sampling); files made under another key
    are discarded."""

    def __init__(self, folder: Path, key: dict) -> None:
        self.folder = folder
        key_file = folder / "key.json"
        if folder.exists() and _read_json(key_file) != key:  # no key (a kill while discarding): discard too
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files.write_json(key_file, key, indent=1)

    def _path(self, pair: Pair) -> Path:
        return self.folder / f"{pair.mode}_{pair.source.identity}_{pair.source.clip}.npz"

    def __contains__(self, pair: Pair) -> bool:
        return self._path(pair).is_file()

    def load(self, pair: Pair) -> GeneratedVideo:
        with np.load(self._path(pair)) as f:
            return GeneratedVideo(f["frames"], f["renders"], f["clip_starts"].tolist())

    def save(self, pair: Pair, generated: GeneratedVideo) -> None:
        files.write_npz(self._path(pair), {"frames": generated.frames, "renders": generated.renders,
                                           "clip_starts": np.asarray(generated.clip_starts)})


def _read_json(path: Path):
    """The JSON value in ``path``; None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _generation_key(checkpoint: str | Path | None, data: Path, options: EvaluateOptions) -> dict:
    """What the generated frames depend on; the checkpoint by its weight files' names, sizes and times."""
    folder = Path(checkpoint) if checkpoint is not None else BUNDLED_MODEL
    weights = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            stat = f.stat()
            weights.update(f"{f.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return {"checkpoint": str(folder.resolve()), "weights": weights.hexdigest(), "data": str(data.resolve()),
            **{k: getattr(options, k) for k in ("engine", "split", "max_clips", "num_inference_steps", "guidance_scale",
                                                "seed", "use_ica")}}


class Evaluator:
    """Holds the networks and measures one pair's frames against its ground truth."""

    def __init__(self, options: EvaluateOptions, synthtalk: bool) -> None:
        self.options = options
        self.reader = EstimatorReader(options.estimator) if synthtalk else RealFaceReader()
        self.lpips = (LPIPS.from_files(options.lpips_net, backbone=options.lpips_backbone, linear=options.lpips_linear)
                      if options.lpips_backbone or options.lpips_linear else None)
        self.inception = FIDInceptionV3.from_file(options.fid_weights) if options.fid_weights else None

    @torch.no_grad()
    def lpips_distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Mean LPIPS of two uint8 videos (N, H, W, 3)."""
        unit = lambda x: torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        chunks = max(1, len(a) // 16)
        return float(torch.cat([self.lpips(unit(x), unit(y)) for x, y in
                                zip(np.array_split(a, chunks), np.array_split(b, chunks))]).mean())

    def reference_features(self, pair: Pair) -> np.ndarray:
        """Features of the real frames a pair without ground truth is compared with."""
        features = self.reader.read(pair.reference, pair.motion.identity).features
        return features[np.isfinite(features).all(1)]

    def source_embedding(self, pair: Pair) -> np.ndarray:
        """The reader's identity embedding of the pair's source image (NaN when it finds no face)."""
        return self.reader.read(pair.source_frame[None], pair.motion.identity).embedding[0]

    def measure(self, pair: Pair, frames: np.ndarray, clip_starts: list[int], source: np.ndarray) -> dict:
        """Scalar metrics of one pair plus per-frame errors and features (kept for plots and FD).
        ``source``: :meth:`source_embedding` of the pair. Frames where the reader finds no face are
        left out of its averages (``face_found``)."""
        read = self.reader.read(frames, pair.motion.identity)
        target = {k: getattr(pair.motion, k) for k in ("pose", "expression", "gaze")}
        pose_error = np.abs(read.pose[:, :3] - target["pose"][:, :3]).mean(1)
        expression_error = np.abs(read.expression - target["expression"]).mean(1)
        gaze_error = np.abs(read.gaze - target["gaze"]).mean(1)
        found = np.isfinite(pose_error)
        out = {"face_found": float(found.mean())}
        if found.any():
            out |= {"pose_error": float(pose_error[found].mean()), "expression_error": float(expression_error[found].mean()),
                    "gaze_error": float(gaze_error[found].mean())}
        similarity = read.embedding @ source
        if np.isfinite(similarity).any():
            out["csim"] = float(np.nanmean(similarity))
        if pair.truth is not None and frames is not pair.truth:
            out |= {"psnr": psnr(frames, pair.truth), "ssim": ssim(frames, pair.truth)}
            if self.lpips is not None:
                out["lpips"] = self.lpips_distance(frames, pair.truth)
        if len(clip_starts) > 1:
            out["boundary_ratio"] = boundary_consistency(frames, clip_starts)["ratio"]
            out["colour_drift"] = colour_drift(frames, clip_starts)["max_from_first"]
        per_frame = {"pose_error": pose_error, "expression_error": expression_error, "gaze_error": gaze_error,
                     "change": np.abs(np.diff(frames.astype(np.float64), axis=0)).reshape(len(frames) - 1, -1).mean(1)}
        features = read.features[np.isfinite(read.features).all(1)]
        return {"scalars": out, "per_frame": per_frame, "features": features}


def evaluate(checkpoint: str | Path | None, data: str | Path, output: str | Path,
             options: EvaluateOptions | None = None, progress: bool = True) -> dict:
    """Run the protocol; write ``metrics.md``/``.json``/``.csv``, per-pair figures and plots to ``output``.
    Returns the summary (mean of each metric per mode and row). One process at a time writes a
    report folder (another gets "OUTPUT is in use by process N"); every file appears whole."""
    output = Path(output)
    with files.folder_lock(output):
        return _evaluate(checkpoint, Path(data), output, options or EvaluateOptions(), progress)


def _evaluate(checkpoint: str | Path | None, data: Path, output: Path, options: EvaluateOptions,
              progress: bool) -> dict:
    engine = Engine.load(choose_engine(options.engine, checkpoint), checkpoint)
    if engine.name == "diffusion":
        engine.pipeline.set_progress_bar_config(disable=True)
    sampling = SamplingOptions(num_inference_steps=options.num_inference_steps, guidance_scale=options.guidance_scale,
                               seed=options.seed, use_ica=options.use_ica)
    pairs = make_pairs(data, options)
    evaluator = Evaluator(options, synthtalk=read_dataset_info(data).get("source") == "synthtalk")
    if engine.name == "diffusion" and pairs[0].source_frame.shape[0] != engine.pipeline.image_size:
        raise InputError(f"the data set is {pairs[0].source_frame.shape[0]} px, the model {engine.pipeline.image_size} px")
    results: dict[str, dict[str, list[dict]]] = {mode: {} for mode in options.modes}
    feature_sets: dict[str, dict[str, list[np.ndarray]]] = {mode: {} for mode in options.modes}
    reference_features: dict[str, list[np.ndarray]] = {mode: [] for mode in options.modes}
    kept: dict[str, list[np.ndarray]] = {mode: [] for mode in options.modes}  # generated frames, for FID
    clip_starts: list[int] = []
    videos = GeneratedVideos(output / "generated", _generation_key(checkpoint, data, options))
    done = sum(pair in videos for pair in pairs)
    if done and progress:
        print(f"{output / 'generated'}: {done} of {len(pairs)} pairs already generated, measuring them again")
    for index, pair in enumerate(tqdm(pairs, desc="pairs", disable=not progress)):
        if pair in videos:
            generated = videos.load(pair)
        else:
            generated = GeneratedVideo.from_clips(engine.clips(aligned_source(pair.source_frame, pair.source_motion),
                                                               pair.motion, sampling))
            videos.save(pair, generated)
        clip_starts = generated.clip_starts
        if evaluator.inception is not None:
            kept[pair.mode].append(generated.frames)
        rows = {GENERATED: generated.frames, "ground truth": pair.truth,
                "source held still": np.repeat(pair.source_frame[None], len(generated.frames), 0),
                "I_R only": np.repeat(generated.renders[..., None], 3, -1)}
        source = evaluator.source_embedding(pair)
        for row, frames in rows.items():
            if frames is None:
                continue
            measured = evaluator.measure(pair, frames, generated.clip_starts, source)
            measured["pair"] = pair.name
            results[pair.mode].setdefault(row, []).append(measured)
            feature_sets[pair.mode].setdefault(row, []).append(measured.pop("features"))
        reference_features[pair.mode].append(feature_sets[pair.mode]["ground truth"][-1] if pair.truth is not None
                                             else evaluator.reference_features(pair))
        if index % max(1, len(pairs) // len(options.modes)) < options.figures:
            _pair_figure(output / "figures" / f"{pair.mode}_{pair.source.identity}_{pair.source.clip}.png", pair,
                         generated)
    summary = _summarise(results, feature_sets, reference_features, evaluator, pairs, kept, progress)
    summary["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items()}
    summary["checkpoint"] = ("mesh-warp engine" if engine.name == "warp" else
                             str(checkpoint) if checkpoint is not None else "bundled tiny model")
    summary["reader"] = evaluator.reader.name
    summary["estimator_held_out"] = evaluator.reader.record.get("held_out", {})
    _write_tables(summary, output)
    _plots(results, clip_starts, output)
    files.write_json(output / "per_pair.json",
                     {mode: {row: [{"pair": m["pair"], **m["scalars"]} for m in items] for row, items in rows.items()}
                      for mode, rows in results.items()}, indent=1)
    return summary


def _summarise(results, feature_sets, reference_features, evaluator: Evaluator, pairs: list[Pair],
               kept: dict[str, list[np.ndarray]], progress: bool) -> dict:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for mode, rows in results.items():
        table[mode] = {}
        reference = np.concatenate(reference_features[mode])
        for row, items in rows.items():
            means = {}
            for key, _ in COLUMNS:
                values = [m["scalars"][key] for m in items if key in m["scalars"]]
                if values:
                    means[key] = float(np.mean(values))
            features = np.concatenate(feature_sets[mode][row])
            if row != "ground truth" and min(len(features), len(reference)) >= 2:  # faces were read in both
                means["fd"] = frechet_distance_of_features(features, reference)
            table[mode][row] = means
        if evaluator.inception is not None:
            real = np.concatenate([p.reference for p in pairs if p.mode == mode])
            table[mode][GENERATED]["fid"] = fid(np.concatenate(kept[mode]), real, evaluator.inception,
                                                progress=progress)
    return {"table": table, "pairs": {mode: len(rows[GENERATED]) for mode, rows in results.items()}}


# "{reader}": est (the SynthTalk estimator) or dlib (real faces).
COLUMNS = [("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓"), ("pose_error", "pose err (deg) ↓"),
           ("expression_error", "expr err ↓"), ("gaze_error", "gaze err ↓"), ("csim", "CSIM-{reader} ↑"),
           ("fd", "FD-{reader} ↓"), ("fid", "FID ↓"), ("boundary_ratio", "seam ratio"),
           ("colour_drift", "colour drift ↓"), ("face_found", "faces read")]


def _write_tables(summary: dict, output: Path) -> None:
    table = summary["table"]
    present = [(k, label.format(reader=summary["reader"])) for k, label in COLUMNS
               if any(k in row for rows in table.values() for row in rows.values())]
    lines, records = [], []
    for mode, rows in table.items():
        lines += [f"### {mode}-identity ({summary['pairs'][mode]} pairs)", "",
                  "| | " + " | ".join(label for _, label in present) + " |",
                  "| --- |" + " ---: |" * len(present)]
        for row, values in rows.items():
            lines.append(f"| {row} | " + " | ".join(_fmt(values.get(k)) for k, _ in present) + " |")
            records.append({"mode": mode, "row": row, **values})
        lines.append("")
    lines += _reader_notes(summary)
    files.write_text(output / "metrics.md", "\n".join(lines))
    files.write_json(output / "metrics.json", summary)
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, ["mode", "row", *[k for k, _ in present]])
    writer.writeheader()
    writer.writerows(records)
    files.write_text(output / "metrics.csv", table_csv.getvalue())


def _reader_notes(summary: dict) -> list[str]:
    """What the reader's own held-out accuracy says about the estimated columns."""
    held = summary.get("estimator_held_out") or {}
    if not held:
        return []
    lines = [(f"Reader: the SynthTalk estimator, on {held['identities']} held-out identities: pose "
              f"{held['pose_angle_mae_deg']:.2f} deg mean absolute error (a constant: "
              f"{held['pose_angle_mae_deg_predicting_mean']:.2f}), identity rank-1 {held['identity_rank1']:.3f}.")]
    for key in ("expression", "gaze"):
        per_channel = held.get("correlation", {}).get(key)
        if per_channel is None:
            continue
        correlation = float(np.mean(list(per_channel.values()) if isinstance(per_channel, dict) else per_channel))
        if correlation < 0.5:
            lines.append(f"It cannot see {key} at this resolution (mean held-out correlation {correlation:.2f}; "
                         f"error {held[f'{key}_mae']:.4f} against {held[f'{key}_mae_predicting_mean']:.4f} for a "
                         f"constant): the {key} column is not a measurement.")
    return lines + [""]


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _pair_figure(path: Path, pair: Pair, generated) -> None:
    from mimaface.figures import image_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    picks = np.linspace(0, len(pair.truth) - 1, 6).round().astype(int)
    blank = np.full_like(pair.source_frame, 255)
    driving = np.asarray(pair.driving.frames())
    rows = [[pair.source_frame] + [driving[i] for i in picks],
            [blank] + [np.repeat(generated.renders[i][..., None], 3, -1) for i in picks],
            [blank] + [generated.frames[i] for i in picks], [blank] + [pair.truth[i] for i in picks]]
    image_grid(rows, path, row_labels=["driving", "I_R", "generated", "ground truth"],
               column_labels=["source"] + [f"frame {i}" for i in picks], title=pair.name)


def _plots(results, clip_starts: list[int], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("psnr", "ssim", "pose_error", "expression_error", "gaze_error", "csim")
    fig, axes = plt.subplots(len(results), len(shown), figsize=(3.2 * len(shown), 2.8 * len(results)), squeeze=False)
    for r, (mode, rows) in enumerate(results.items()):
        for c, key in enumerate(shown):
            ax = axes[r, c]
            for row in (GENERATED, "source held still", "ground truth"):
                values = [m["scalars"][key] for m in rows.get(row, []) if key in m["scalars"]]
                if values:
                    ax.hist(values, bins=15, alpha=0.5, label=row)
            ax.set_title(f"{mode}: {key}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_output(output / "distributions.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(len(results), 4, figsize=(14, 2.8 * len(results)), squeeze=False)
    for r, (mode, rows) in enumerate(results.items()):
        for c, key in enumerate(("pose_error", "expression_error", "gaze_error", "change")):
            ax = axes[r, c]
            for row in (GENERATED, "ground truth"):
                if row not in rows:
                    continue
                with warnings.catch_warnings():  # frames where no pair had a face read stay NaN (a gap)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    curve = np.nanmean([m["per_frame"][key] for m in rows[row]], axis=0)
                ax.plot(np.arange(len(curve)) + (1 if key == "change" else 0), curve, label=row)
            if key == "change":
                for start in clip_starts[1:]:
                    ax.axvline(start, color="grey", linestyle="--", linewidth=0.8)
                ax.set_title(f"{mode}: frame-to-frame change (seams dashed)", fontsize=9)
            else:
                ax.set_title(f"{mode}: {key} by frame", fontsize=9)
            ax.set_xlabel("frame")
        axes[r, 0].legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_output(output / "over_frames.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
