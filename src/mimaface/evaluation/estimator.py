"""The SynthTalk estimator: one small CNN that reads pose, expression, gaze and an identity
embedding off a face crop.

The paper measures motion and identity with pretrained estimators (a 3DMM regressor, a gaze
network, CurricularFace). None of those can be had here, and on SynthTalk we can do better than
borrow one: every frame comes with its exact coefficients and identity, so the estimator is
trained on them (``mimaface train-estimator``) and its own error on held-out identities is
measured and stated beside every figure it produces. It is trained with blur, noise and colour
augmentation so that the soft frames a generator makes are read like sharp ones.

Outputs: ``pose`` (yaw, pitch, roll in degrees, tx, ty, scale), ``expression`` (the face model's
blendshape weights), ``gaze`` (leftX, leftY, rightX, rightY), ``embedding`` (unit vector; cosine
similarity of two is the SynthTalk CSIM) and ``features`` (the pooled activations the Fréchet
distance uses). Saved as ``config.json`` + ``model.safetensors``; the trained one ships in
``mimaface/assets/estimator``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mimaface import files
from mimaface.data.clipstore import list_clips, read_dataset_info
from mimaface.errors import InputError, ModelLoadError
from mimaface.face3d.model import FaceModel
from mimaface.models import loading
from mimaface.synthtalk import SynthConfig
from mimaface.synthtalk.generator import render_coefficients

BUNDLED_ESTIMATOR = Path(__file__).resolve().parents[1] / "assets" / "estimator"
SAVED_HOW = "a folder written by `mimaface train-estimator` (config.json + model.safetensors)"
ESTIMATOR_FILES = frozenset({"config.json", "model.safetensors", "estimator.json"})
TARGETS = ("pose", "expression", "gaze")


@dataclass
class EstimatorConfig:
    """Sizes, and the training data's target statistics (outputs are de-standardised with them)."""

    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    embedding_dim: int = 128
    num_expressions: int = 36
    expression_names: list[str] = field(default_factory=list)
    target_mean: dict[str, list[float]] = field(default_factory=dict)
    target_std: dict[str, list[float]] = field(default_factory=dict)

    def dims(self) -> dict[str, int]:
        return {"pose": 6, "expression": self.num_expressions, "gaze": 4}


class _Block(nn.Module):
    """Two 3x3 convolutions with a (strided) residual path."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.skip(x))


@dataclass
class FaceReading:
    """What is read off N face images: tensors from ``FaceEstimator.forward``, numpy arrays from
    ``predict`` and from the evaluation's readers (NaN rows where a reader found no face)."""

    pose: Any  # (N, 6)
    expression: Any  # (N, E)
    gaze: Any  # (N, 4)
    embedding: Any  # (N, D), unit length
    features: Any  # (N, F), for the Fréchet distance


class FaceEstimator(nn.Module):
    """Face crop (N, 3, S, S) in [0, 1] -> :class:`FaceReading`. Other sizes are resized to S."""

    def __init__(self, config: EstimatorConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 4, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.blocks = nn.Sequential(*(_Block(a, b, 2) for a, b in zip((w[0], *w[:-1]), w)))
        dims = config.dims()
        self.regression = nn.Linear(w[-1], sum(dims.values()))
        self.embed = nn.Linear(w[-1], config.embedding_dim)
        total = sum(dims.values())
        mean = torch.cat([torch.tensor(config.target_mean.get(k, [0.0] * d), dtype=torch.float32) for k, d in dims.items()])
        std = torch.cat([torch.tensor(config.target_std.get(k, [1.0] * d), dtype=torch.float32) for k, d in dims.items()])
        if mean.numel() != total or std.numel() != total:
            raise ValueError("target statistics do not match the output sizes")
        self.register_buffer("target_mean", mean, persistent=False)
        self.register_buffer("target_std", std, persistent=False)

    def standardised(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(standardised regression outputs, unit embeddings, pooled features): what training uses."""
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"the estimator takes (N, 3, H, W) images, got {tuple(images.shape)}")
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        features = self.blocks(self.stem(images * 2 - 1)).mean((2, 3))
        return self.regression(features), F.normalize(self.embed(features), dim=-1), features

    def forward(self, images: torch.Tensor) -> FaceReading:
        regression, embedding, features = self.standardised(images)
        values = regression * self.target_std + self.target_mean
        pose, expression, gaze = values.split(list(self.config.dims().values()), dim=-1)
        return FaceReading(pose, expression, gaze, embedding, features)

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 256, progress: bool = False) -> FaceReading:
        """uint8 (N, H, W, 3) -> every output as numpy arrays, in eval mode."""
        self.eval()
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InputError(f"the estimator takes uint8 (N, H, W, 3) images, got {images.shape} {images.dtype}")
        parts: dict[str, list[np.ndarray]] = {}
        for start in tqdm(range(0, len(images), batch_size), desc="estimator", disable=not progress, leave=False):
            x = torch.tensor(images[start:start + batch_size]).permute(0, 3, 1, 2).float().div(255)
            out = self(x)
            for key, value in asdict(out).items():
                parts.setdefault(key, []).append(value.numpy())
        return FaceReading(**{key: np.concatenate(value) for key, value in parts.items()})

    def save_pretrained(self, directory: str | Path, record: dict | None = None) -> None:
        """``config.json`` + ``model.safetensors`` (+ ``estimator.json``: how it was trained, how good it is).
        The folder is built beside ``directory`` and swapped in whole; an existing ``directory`` must
        hold nothing else (see :func:`check_output_folder`)."""
        d = Path(directory)
        check_output_folder(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_folder(d) as tmp:
            loading.save_module(self, tmp, asdict(self.config))
            if record is not None:
                files.write_json(tmp / "estimator.json", record)

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None) -> FaceEstimator:
        """Load a saved estimator; None = the bundled one (trained on SynthTalk 64 px)."""
        d = Path(directory) if directory is not None else BUNDLED_ESTIMATOR
        config = loading.read_config(d, "estimator", SAVED_HOW)
        try:
            config = EstimatorConfig(**{**config, "widths": tuple(config.get("widths", EstimatorConfig.widths))})
        except TypeError as exc:
            raise ModelLoadError(f"'{d / 'config.json'}' is not an estimator config ({exc}); expected {SAVED_HOW}") from None
        model = cls(config)
        loading.load_module(model, d, "estimator", SAVED_HOW)
        return model.eval()


def estimator_record(directory: str | Path | None = None) -> dict:
    """How a saved estimator was trained and its held-out accuracy (``estimator.json``), or {}."""
    path = (Path(directory) if directory is not None else BUNDLED_ESTIMATOR) / "estimator.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# -- training -------------------------------------------------------------------------------------
@dataclass
class EstimatorTraining:
    steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    identity_weight: float = 1.0
    cosine_scale: float = 16.0
    cosine_margin: float = 0.2
    seed: int = 0
    # Re-render every training frame with coefficients shuffled across the data set (see
    # ``decorrelated``): otherwise the net reads expression and gaze off who the person is.
    decorrelate: bool = True
    extra_expressions: int = 2  # per re-rendered frame, this many random blendshapes set to U(0, 1) half the time


@dataclass
class FrameSet:
    """Every frame of a split in memory, with its targets and identity label."""

    images: np.ndarray  # (N, S, S, 3) uint8
    targets: dict[str, np.ndarray]  # pose (N, 6), expression (N, E), gaze (N, 4)
    identity: np.ndarray  # (N,) int, index into ``names``
    clip: np.ndarray  # (N,) int, the clip's index within its identity
    names: list[str]
    expression_names: tuple[str, ...]


def load_frames(root: str | Path, split: str, progress: bool = False) -> FrameSet:
    """All frames and coefficients of ``split`` of a data set in the mimaface-clips format."""
    clips = list_clips(Path(root), split)
    if not clips:
        raise InputError(f"'{root}' has no {split} clips")
    names = sorted({c.identity for c in clips})
    label = {name: i for i, name in enumerate(names)}
    images, identity, clip_index, targets = [], [], [], {k: [] for k in TARGETS}
    per_identity: dict[str, int] = {}
    expression_names: tuple[str, ...] = ()
    for ref in tqdm(clips, desc=f"reading {split}", disable=not progress, leave=False):
        frames = np.asarray(ref.frames(mmap=False))
        motion = ref.motion()
        expression_names = tuple(motion.expression_names)
        images.append(frames)
        identity.append(np.full(len(frames), label[ref.identity]))
        clip_index.append(np.full(len(frames), per_identity.get(ref.identity, 0)))
        per_identity[ref.identity] = per_identity.get(ref.identity, 0) + 1
        for key in TARGETS:
            targets[key].append(np.asarray(getattr(motion, key), np.float32))
    return FrameSet(np.concatenate(images), {k: np.concatenate(v) for k, v in targets.items()},
                    np.concatenate(identity), np.concatenate(clip_index), names, expression_names)


def decorrelated(frames: FrameSet, recipe: SynthConfig, training: EstimatorTraining,
                 progress: bool = False) -> FrameSet:
    """The same identities and the same coefficient rows, each group (pose, expression, gaze)
    permuted independently across all frames, half the expressions given ``extra_expressions``
    random blendshapes, and every frame rendered anew by SynthTalk.

    SynthTalk clips are performances: within an identity's few clips, expression and gaze change
    little, so a network can learn them from the identity's look (on held-out identities an
    estimator trained on the clips read smiles, blinks and gaze at chance). Shuffled, nothing but
    the face's own shape says what the coefficients are.
    """
    rng = np.random.default_rng(training.seed)
    n = len(frames.images)
    targets = {key: value[rng.permutation(n)].copy() for key, value in frames.targets.items()}
    expression = targets["expression"]
    boosted = np.flatnonzero(rng.random(n) < 0.5)
    for _ in range(training.extra_expressions):
        channel = rng.integers(0, expression.shape[1], len(boosted))
        expression[boosted, channel] = rng.random(len(boosted))
    images = np.empty_like(frames.images)
    model = FaceModel.load()
    for label, name in enumerate(tqdm(frames.names, desc="re-rendering", disable=not progress, leave=False)):
        rows = np.flatnonzero(frames.identity == label)
        images[rows] = render_coefficients(recipe, int(name.removeprefix("id")),
                                           *(targets[key][rows] for key in TARGETS), model=model)
    return dataclasses.replace(frames, images=images, targets=targets)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Photometric changes that leave pose, expression, gaze and identity as they are: blur (as a
    generator's soft output), colour and brightness shifts, noise. (N, 3, S, S) in [0, 1]."""
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand((n, *shape), generator=generator) * (high - low) + low

    sigma = uniform(0.0, 1.5) * (torch.rand(n, generator=generator) < 0.6)
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets**2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (N, 7); sigma ~ 0 gives a delta
    x = images.reshape(1, n * 3, *images.shape[-2:])
    k = kernel.repeat_interleave(3, 0)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(n * 3, 1, 1, -1), groups=n * 3)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(n * 3, 1, -1, 1), groups=n * 3)
    x = x.view_as(images)
    x = x * uniform(0.8, 1.2, 3, 1, 1) + uniform(-0.08, 0.08, 3, 1, 1)  # per-channel gain and offset
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * uniform(0.6, 1.3, 1, 1, 1)  # saturation
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.03, 1, 1, 1)
    return x.clamp(0, 1)


def check_output_folder(directory: Path) -> None:
    """An estimator replaces its folder whole, so a folder that holds anything but an estimator's
    files is refused (InputError) rather than deleted."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a folder; the estimator is written to a folder")
    other = sorted(p.name for p in directory.iterdir() if p.name not in ESTIMATOR_FILES)
    if other:
        raise InputError(f"{directory}: holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                         f"the estimator replaces its folder whole: choose an empty or new folder")


def train_estimator(data: str | Path, output: str | Path, training: EstimatorTraining | None = None,
                    config: EstimatorConfig | None = None, progress: bool = True) -> dict:
    """Train on ``data``'s train split, measure on its test split (held-out identities), save to
    ``output``. Returns the record written to ``estimator.json``."""
    check_output_folder(Path(output))  # before the training, not after
    training = training or EstimatorTraining()
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed)
    train = load_frames(data, "train", progress)
    info = read_dataset_info(Path(data))
    if training.decorrelate:
        if info.get("source") != "synthtalk":
            raise InputError(f"{data}: the estimator is trained on SynthTalk data (it re-renders its identities)")
        train = decorrelated(train, SynthConfig(**info["config"]), training, progress)
    size = train.images.shape[1]
    config = config or EstimatorConfig(image_size=size)
    config.num_expressions = train.targets["expression"].shape[1]
    config.expression_names = list(train.expression_names)
    config.target_mean = {k: v.mean(0).tolist() for k, v in train.targets.items()}
    config.target_std = {k: np.maximum(v.std(0), 1e-3).tolist() for k, v in train.targets.items()}
    model = FaceEstimator(config)
    classifier = nn.Parameter(torch.randn(len(train.names), config.embedding_dim) * 0.01)
    optimiser = torch.optim.AdamW([*model.parameters(), classifier], lr=training.learning_rate,
                                  weight_decay=training.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, training.learning_rate, total_steps=training.steps,
                                                   pct_start=0.05)
    images = torch.from_numpy(train.images)
    standard = torch.from_numpy(np.concatenate(
        [(train.targets[k] - np.array(config.target_mean[k], np.float32)) / np.array(config.target_std[k], np.float32)
         for k in TARGETS], 1))
    labels = torch.from_numpy(train.identity).long()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(training.steps), desc="estimator", disable=not progress)
    logs = []
    for step in bar:
        index = torch.randint(0, len(images), (training.batch_size,), generator=generator)
        x = augment(images[index].permute(0, 3, 1, 2).float().div(255), generator)
        regression, embedding, _ = model.standardised(x)
        regression_loss = F.smooth_l1_loss(regression, standard[index], beta=0.5)
        logits = embedding @ F.normalize(classifier, dim=-1).T
        margin = F.one_hot(labels[index], len(train.names)) * training.cosine_margin
        identity_loss = F.cross_entropy(training.cosine_scale * (logits - margin), labels[index])
        loss = regression_loss + training.identity_weight * identity_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == training.steps - 1:
            logs.append({"step": step, "regression": regression_loss.item(), "identity": identity_loss.item()})
            bar.set_postfix(regression=f"{regression_loss.item():.3f}", identity=f"{identity_loss.item():.3f}",
                            refresh=False)
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = measure_estimator(model, load_frames(data, "test", progress))
    record = {"data": str(data), "data_config": info.get("config", {}),
              "training": asdict(training), "train_seconds": round(seconds, 1),
              "train_frames": len(images), "train_identities": len(train.names),
              "held_out": accuracy, "log": logs}
    model.save_pretrained(output, record)
    return record


def measure_estimator(model: FaceEstimator, test: FrameSet) -> dict:
    """The estimator's own error on ``test`` (held-out identities): mean absolute error per group,
    beside the error of always answering the test split's own mean, and the correlation of read and
    true values per channel; identity: rank-1 identification of each clip-1 frame against the mean
    clip-0 embeddings of every test identity, and the mean cosine similarity of same- and
    different-identity frame pairs."""
    out = model.predict(test.images)
    result: dict = {"frames": len(test.images), "identities": len(test.names)}
    mean = {k: test.targets[k].mean(0) for k in TARGETS}
    pose_error = np.abs(out.pose - test.targets["pose"])
    result["pose_angle_mae_deg"] = float(pose_error[:, :3].mean())
    result["pose_angle_mae_deg_per_axis"] = dict(zip(("yaw", "pitch", "roll"), map(float, pose_error[:, :3].mean(0))))
    result["pose_angle_mae_deg_predicting_mean"] = float(np.abs(mean["pose"][:3] - test.targets["pose"][:, :3]).mean())
    for key in ("expression", "gaze"):
        result[f"{key}_mae"] = float(np.abs(getattr(out, key) - test.targets[key]).mean())
        result[f"{key}_mae_predicting_mean"] = float(np.abs(mean[key] - test.targets[key]).mean())
    # Correlation of read and true values per channel: what the estimator can see at all.
    result["correlation"] = {key: _correlations(getattr(out, key), test.targets[key]) for key in TARGETS}
    result["correlation"]["expression"] = dict(zip(model.config.expression_names or
                                                   map(str, range(model.config.num_expressions)),
                                                   result["correlation"]["expression"]))
    embedding = out.embedding
    gallery_mask, probe_mask = test.clip == 0, test.clip > 0
    if probe_mask.any():
        gallery = np.stack([embedding[gallery_mask & (test.identity == i)].mean(0) for i in range(len(test.names))])
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        guess = (embedding[probe_mask] @ gallery.T).argmax(1)
        result["identity_rank1"] = float((guess == test.identity[probe_mask]).mean())
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(embedding), (2, 20000))
    cosine = (embedding[a] * embedding[b]).sum(1)
    same = test.identity[a] == test.identity[b]
    result["identity_cosine_same"] = float(cosine[same & (a != b)].mean())
    result["identity_cosine_different"] = float(cosine[~same].mean())
    return result


def _correlations(read: np.ndarray, truth: np.ndarray) -> list[float]:
    """Pearson correlation per column (0 for a constant column)."""
    read, truth = read - read.mean(0), truth - truth.mean(0)
    scale = np.sqrt((read**2).sum(0) * (truth**2).sum(0))
    return [round(float(c), 3) for c in np.where(scale > 0, (read * truth).sum(0) / np.where(scale > 0, scale, 1), 0)]
