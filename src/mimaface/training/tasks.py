"""What each stage trains, on what data, and how it is validated and exported.

* ``vae``: a diffusers ``AutoencoderKL`` on frames and I_R renders (the tiny scale's latent
  codec; SD-1.5 brings its own).
* ``1``: the MIMAFace model on frame pairs: UNet, CLIP, MIA and adapter, identity head.
* ``2``: W_cond and the motion modules on F-frame clips; everything else frozen.

Validation always uses the held-out (``test``) identities.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
from torch import nn

from mimaface.data.datasets import ClipDataset, FramePairDataset
from mimaface.errors import InputError
from mimaface.face3d.coefficients import MotionCoefficients
from mimaface.figures import image_grid
from mimaface.models import loading
from mimaface.models.config import MIMAFaceConfig
from mimaface.models.mimaface_model import MIMAFaceModel
from mimaface.pipelines.pipeline import MIMAFacePipeline, to_uint8
from mimaface.training.config import StageSection, TrainConfig
from mimaface.training.latent_cache import LatentCache, build_latent_cache, encode_images
from mimaface.training.objectives import DenoisingObjective, VAEObjective

#: The noise schedule of SD-1.5 (diffusers' DDPMScheduler config in its scheduler/ folder).
SD15_NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                       "beta_schedule": "scaled_linear", "clip_sample": False, "steps_offset": 1}


class Task:
    """One stage: the module to optimise, its data, validation and export."""

    objective: nn.Module
    dataset: Any

    def __init__(self, config: TrainConfig, stage: StageSection, output_dir: Path, device: torch.device,
                 progress: bool) -> None:
        self.config, self.stage, self.output_dir, self.device, self.progress = config, stage, output_dir, device, progress
        if not config.data.root:
            raise InputError("no training data: pass --data DIR (a folder written by `mimaface synth` or "
                             "`mimaface preprocess`) or set data.root in the config")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.objective.parameters() if p.requires_grad]

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The objective's keyword arguments for a DataLoader batch."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Training state outside the optimised module's state dict (saved with each checkpoint)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`checkpoint_state` returned (the caller checked names, shapes and dtypes)."""

    def validate(self, module: nn.Module, path: Path) -> None:
        raise NotImplementedError

    def export(self, module: nn.Module, directory: Path) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- VAE
class VAETask(Task):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.config.model.scale == "sd15":
            raise InputError("the sd15 scale uses SD-1.5's own VAE (model.sd15_dir/vae); --stage vae trains the tiny "
                             "scale's codec")
        model_config = _model_config(self.config)
        if model_config.vae is None:
            raise InputError("this model config has no VAE to train")
        data = self.config.data
        self.dataset = FramePairDataset(data.root, "train", data.size, seed=self.config.seed, render_channels=3)
        self.test = FramePairDataset(data.root, "test", data.size, seed=self.config.seed, render_channels=3)
        vae_config = dict(model_config.vae)
        self.objective = VAEObjective(AutoencoderKL(**vae_config), self.stage.kl_weight)
        self.crop = self.stage.crop_size
        factor = model_config.vae_scale_factor
        if self.crop is not None and (self.crop % factor or self.crop > self.dataset.size):
            raise InputError(f"vae.crop_size {self.crop} must be a multiple of {factor} and at most the image size "
                             f"{self.dataset.size}")

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = torch.cat([batch["target"], batch["target_render"]])  # frames and I_R renders
        if self.crop is not None and self.crop < images.shape[-1]:
            top, left = torch.randint(0, images.shape[-1] - self.crop + 1, (2,)).tolist()
            images = images[..., top:top + self.crop, left:left + self.crop]
        return {"images": images.to(self.device)}

    @torch.no_grad()
    def validate(self, module: nn.Module, path: Path) -> None:
        vae = module.vae
        n = min(self.config.data.validation_samples * 2, len(self.test))
        items = [self.test[i] for i in np.linspace(0, len(self.test) - 1, n).astype(int)]
        images = torch.stack([it["target"] for it in items[: n // 2]] + [it["target_render"] for it in items[n // 2:]])
        was_training = vae.training
        vae.eval()
        recon = vae.decode(vae.encode(images.to(self.device)).latent_dist.mean).sample.cpu()
        vae.train(was_training)
        psnr = _psnr(recon, images)
        tiles = lambda x: list(to_uint8((x.float() / 2 + 0.5).permute(0, 2, 3, 1).numpy()))  # [-1, 1] -> uint8
        image_grid([tiles(images), tiles(recon)], path,
                   row_labels=["input", "reconstruction"],
                   title=f"VAE on held-out identities: PSNR {psnr:.2f} dB")

    @torch.no_grad()
    def export(self, module: nn.Module, directory: Path) -> None:
        vae: AutoencoderKL = module.vae
        vae.eval()
        # Latents are scaled to unit variance for the diffusion model, as SD-1.5's 0.18215 does.
        n = min(512, len(self.dataset))
        index = np.linspace(0, len(self.dataset) - 1, n).astype(int)
        latents = []
        for start in range(0, n, 32):
            items = [self.dataset[int(i)] for i in index[start:start + 32]]
            images = torch.stack([it["target"] for it in items] + [it["target_render"] for it in items])
            latents.append(vae.encode(images.to(self.device)).latent_dist.mean.float().cpu())
        std = float(torch.cat(latents).std())
        vae.register_to_config(scaling_factor=1.0 / std)
        vae.save_pretrained(directory)


# ----------------------------------------------------------------------------- stages 1 and 2
class _DenoisingTask(Task):
    """What stages 1 and 2 share: the frozen VAE, latents (cached or encoded), the noise schedule."""

    model: MIMAFaceModel
    vae: AutoencoderKL
    noise_scheduler: DDPMScheduler

    def _setup_latents(self, datasets: list[Any]) -> None:
        self.vae.requires_grad_(False).eval().to(self.device)
        self.cache: LatentCache | None = None
        if self.config.data.cache_latents:
            directory = Path(self.config.data.latent_cache or self.output_dir / "latent_cache")
            for dataset in datasets:  # the caller runs this on the main process first
                self.cache = build_latent_cache(self.vae, dataset, directory, progress=self.progress)

    def _latents(self, dataset: Any, clip_index: torch.Tensor, frames: torch.Tensor, images: torch.Tensor,
                 renders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            refs = [dataset.clips[int(c)] for c in clip_index]
            latents, render_latents = self.cache.gather(refs, frames)
            return latents.to(self.device), render_latents.to(self.device)
        shape = images.shape
        latents = encode_images(self.vae, images.flatten(0, -4).to(self.device))
        render_latents = encode_images(self.vae, renders.flatten(0, -4).to(self.device))
        return latents.unflatten(0, shape[:-3]), render_latents.unflatten(0, shape[:-3])

    def pipeline(self, model: MIMAFaceModel) -> MIMAFacePipeline:
        """The inference pipeline around ``model`` (the one users run; validation and export use it):
        DDIM on the training noise schedule, the crop size and the stage-2 clip length F."""
        pipeline = MIMAFacePipeline(model=model, vae=self.vae, scheduler=DDIMScheduler.from_config(self.noise_scheduler.config),
                                    image_size=self.dataset.size, clip_length=self.config.data.num_frames)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _sample(self, pipeline: MIMAFacePipeline, source: np.ndarray,
                motion: MotionCoefficients) -> tuple[np.ndarray, np.ndarray]:
        """(generated frames uint8, their I_R) of ``source`` performing ``motion``, in eval mode."""
        model = pipeline.model
        was_training = model.training
        model.eval()
        try:
            out = pipeline(np.ascontiguousarray(source), motion, num_inference_steps=self.config.validation_inference_steps,
                           guidance_scale=self.config.validation_guidance_scale,
                           generator=torch.Generator().manual_seed(self.config.seed))
        finally:
            model.train(was_training)
        return to_uint8(out.frames), out.renders

    def export(self, module: nn.Module, directory: Path) -> None:
        self.pipeline(module.model).save_pretrained(directory)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        if self.model.identity is None:
            return {}
        bank = self.model.identity.bank
        return {"bank.tokens": bank.tokens, "bank.labels": bank.labels, "bank.pointer": bank.pointer}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.model.identity is None:
            return
        bank = self.model.identity.bank
        for name in ("tokens", "labels", "pointer"):
            getattr(bank, name).copy_(state[f"bank.{name}"])


class ImageTask(_DenoisingTask):
    """Stage 1."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        config, data = self.config, self.config.data
        model_config = _model_config(config)
        m = config.model
        if m.scale == "sd15" and m.sd15_dir:
            if not m.clip_dir:
                raise InputError("model.clip_dir is required with model.sd15_dir (a local transformers CLIP folder)")
            self.model = MIMAFaceModel.from_components(m.sd15_dir, m.clip_dir, m.motion_adapter_dir, config=model_config)
            vae_dir = Path(m.vae) if m.vae else Path(m.sd15_dir) / "vae"
            scheduler_dir = Path(m.sd15_dir) / "scheduler"
            self.noise_scheduler = (DDPMScheduler.from_pretrained(scheduler_dir) if scheduler_dir.is_dir()
                                    else DDPMScheduler(**SD15_NOISE_SCHEDULE))
        elif m.scale == "sd15":
            raise InputError("stage 1 at sd15 scale starts from pretrained weights: set model.sd15_dir (a local "
                             "diffusers Stable Diffusion 1.5 folder) and model.clip_dir (a local CLIP folder)")
        else:
            if not m.vae:
                raise InputError("the tiny model needs its latent codec: train it first (`mimaface train --stage vae`) "
                                 "and pass its RUN_DIR/final as model.vae=... (or --vae)")
            self.model = MIMAFaceModel(model_config)
            vae_dir = Path(m.vae)
            self.noise_scheduler = DDPMScheduler(**SD15_NOISE_SCHEDULE)
        self.noise_scheduler.register_to_config(prediction_type=self.stage.prediction_type)
        self.vae = loading.load_vae(vae_dir)
        self.model.train()
        self.model.set_stage(1)
        if self.stage.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        identity_weight = model_config.identity.weight if model_config.identity.enabled else 0.0
        self.objective = DenoisingObjective(self.model, self.noise_scheduler, snr_gamma=self.stage.snr_gamma,
                                            identity_weight=identity_weight)
        self.dataset = FramePairDataset(data.root, "train", data.size, seed=config.seed, render_channels=3,
                                        same_frame_probability=data.same_frame_probability)
        self.test = FramePairDataset(data.root, "test", data.size, seed=config.seed, render_channels=3,
                                     identities=self.dataset.identities)
        self.datasets = [self.dataset, self.test]

    def setup_latents(self) -> None:
        self._setup_latents(self.datasets)

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        latents, render_latents = self._latents(self.dataset, batch["clip_index"], batch["target_index"],
                                                batch["target"], batch["target_render"])
        d = self.device
        return {"latents": latents, "render_latents": render_latents, "source": batch["source"].to(d),
                "pose": batch["pose"].to(d), "expression": batch["expression"].to(d), "gaze": batch["gaze"].to(d),
                "identity": batch["identity"].to(d)}

    def validate(self, module: nn.Module, path: Path) -> None:
        """Two figures on held-out identities. ``path``: rows alternate same-identity (the driving frame is
        the ground truth) and cross-identity reenactment, columns source | driving | I_R | generated.
        ``path``-matrix.png: every source (rows) driven by every driving frame (columns); the diagonal
        is same-identity, and appearance should follow the row while pose and expression follow the column."""
        pipeline = self.pipeline(module.model)
        self._validation_rows(pipeline, path)
        self.reenactment_matrix(pipeline, path.with_name(f"{path.stem}-matrix.png"))

    def _held_out_clips(self) -> list[int]:
        """One clip (the first) of each held-out identity."""
        by_identity: dict[int, int] = {}
        for c in range(len(self.test.clips)):
            by_identity.setdefault(int(self.test.clip_identity[c]), c)
        return list(by_identity.values())

    def _generate(self, pipeline: MIMAFacePipeline, source_clip: int, driving_clip: int,
                  frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(I_R with the source's face shape, generated image) for one driving frame; uint8 (S, S) and (S, S, 3)."""
        test = self.test
        source = np.array(test._clip_arrays(source_clip)[0][0])
        motion = dataclasses.replace(test.clips[driving_clip].motion().select([frame]),
                                     identity=test.clips[source_clip].motion().identity)
        frames, renders = self._sample(pipeline, source, motion)
        return renders[0], frames[0]

    def _validation_rows(self, pipeline: MIMAFacePipeline, path: Path) -> None:
        clips = self._held_out_clips()
        rows, labels = [], []
        for i in range(min(self.config.data.validation_samples, len(clips))):
            cross = i % 2 == 1 and len(clips) > 1
            source_clip, driving_clip = clips[i], clips[(i + 1) % len(clips)] if cross else clips[i]
            t = int(self.test.lengths[driving_clip]) // 2
            render, generated = self._generate(pipeline, source_clip, driving_clip, t)
            rows.append([np.array(self.test._clip_arrays(source_clip)[0][0]),
                         np.array(self.test._clip_arrays(driving_clip)[0][t]), np.repeat(render[..., None], 3, -1),
                         generated])
            labels.append("cross-identity" if cross else "same identity")
        image_grid(rows, path, column_labels=["source", "driving", "I_R", "generated"], row_labels=labels,
                   title="held-out identities")

    def reenactment_matrix(self, pipeline: MIMAFacePipeline, path: Path) -> None:
        clips = self._held_out_clips()[: self.config.data.validation_samples]
        t = {c: int(self.test.lengths[c]) // 2 for c in clips}
        header = [np.full((self.test.size, self.test.size, 3), 255, np.uint8)]
        header += [np.array(self.test._clip_arrays(c)[0][t[c]]) for c in clips]
        rows = [header]
        for source_clip in clips:
            rows.append([np.array(self.test._clip_arrays(source_clip)[0][0])]
                        + [self._generate(pipeline, source_clip, d, t[d])[1] for d in clips])
        image_grid(rows, path, row_labels=["driving"] + [f"source {i + 1}" for i in range(len(clips))],
                   column_labels=["source"] + [f"driving {i + 1}" for i in range(len(clips))],
                   title="held-out identities: row = source, column = driving (diagonal: same identity)")


class VideoTask(_DenoisingTask):
    """Stage 2."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        config, data, m = self.config, self.config.data, self.config.model
        if not m.pretrained:
            raise InputError("stage 2 starts from a stage-1 model: set model.pretrained to its RUN_DIR/final "
                             "(or pass --pretrained)")
        pretrained = MIMAFacePipeline.from_pretrained(m.pretrained)
        self.model = pretrained.model
        self.vae = loading.load_vae(Path(m.vae)) if m.vae else pretrained.vae
        self.noise_scheduler = DDPMScheduler.from_config(pretrained.scheduler.config)
        self.noise_scheduler.register_to_config(prediction_type=self.stage.prediction_type)
        self.model.train()
        self.model.set_stage(2)
        if self.stage.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.objective = DenoisingObjective(self.model, self.noise_scheduler, snr_gamma=self.stage.snr_gamma)
        self.dataset = ClipDataset(data.root, "train", data.num_frames, data.stride, size=data.size, seed=config.seed,
                                   render_channels=3)
        self.test = ClipDataset(data.root, "test", data.num_frames, data.stride, size=data.size, seed=config.seed,
                                render_channels=3, jitter=False, identities=self.dataset.identities)
        self.datasets = [self.dataset, self.test]

    def setup_latents(self) -> None:
        self._setup_latents(self.datasets)

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        latents, render_latents = self._latents(self.dataset, batch["clip_index"], batch["frame_indices"],
                                                batch["frames"], batch["renders"])
        d = self.device
        return {"latents": latents, "render_latents": render_latents, "source": batch["source"].to(d),
                "pose": batch["pose"].to(d), "expression": batch["expression"].to(d), "gaze": batch["gaze"].to(d)}

    def validate(self, module: nn.Module, path: Path) -> None:
        """Two consecutive clips of a held-out identity, the second continued from the first through ICA."""
        pipeline = self.pipeline(module.model)
        test = self.test
        f = self.config.data.num_frames
        k = pipeline.config.overlap
        clip = int(np.argmax(test.lengths))
        total = min(int(test.lengths[clip]), 2 * f - k)
        frames, renders = test._clip_arrays(clip)
        motion = test.clips[clip].motion().select(np.arange(total))
        generated, _ = self._sample(pipeline, np.array(frames[-1]), motion)
        image_grid([[np.array(frames[i]) for i in range(total)],
                    [np.repeat(np.array(renders[i])[..., None], 3, -1) for i in range(total)],
                    list(generated)], path, row_labels=["driving", "I_R", "generated"],
                   title=f"held-out identity: {f}-frame clips, the second continued from the first through ICA "
                         f"(k = {k}, new clip from frame {f})")


TASKS = {"vae": VAETask, "1": ImageTask, "2": VideoTask}


def _model_config(config: TrainConfig) -> MIMAFaceConfig:
    overrides = copy.deepcopy(config.model.overrides)
    if config.model.scale == "sd15":
        return MIMAFaceConfig.sd15(**overrides)
    return MIMAFaceConfig.tiny(**overrides)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.clamp(-1, 1) - b) ** 2).mean())
    return 10 * np.log10(4.0 / max(mse, 1e-12))
