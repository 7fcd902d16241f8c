"""MIMAFacePipeline as a diffusers DiffusionPipeline, on a random-weight model: clip scheduling,
N in = N out, seeding, schedulers, output types, callbacks and interruption, streaming, the one
on-disk layout, half precision and model CPU offload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import motion_of
from diffusers import DiffusionPipeline
from PIL import Image

from mimaface.pipelines.pipeline import SCHEDULERS, MIMAFacePipeline, clip_windows, to_uint8


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    torch.set_num_threads(1)
    pipe = MIMAFacePipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_clip_windows_cover_every_frame():
    for n in (1, 5, 6, 7, 13, 40):
        for f, k in ((6, 0), (6, 1), (8, 2)):
            windows = clip_windows(n, f, k)
            new = [i for c, (start, first) in enumerate(windows) for i in range(first, min(start + f, n))]
            assert new == list(range(n))  # each frame generated exactly once, in order
            assert all(first - start == (k if c else 0) for c, (start, first) in enumerate(windows))
    with pytest.raises(Exception, match="overlap"):
        clip_windows(10, 4, 4)


def test_a_diffusers_pipeline_with_its_settings_in_its_config(pipeline, checkpoint):
    assert isinstance(pipeline, DiffusionPipeline)
    assert set(pipeline.components) == {"model", "vae", "scheduler"}
    # F = 6 as saved; k = max(1, floor(6 / 4)) = 1, computed once at export and stored.
    assert (pipeline.config.image_size, pipeline.config.clip_length, pipeline.config.overlap) == (64, 6, 1)
    assert pipeline.scheduler.config.beta_schedule == "scaled_linear"
    assert MIMAFacePipeline.read_settings(checkpoint)["clip_length"] == 6
    assert pipeline.to("cpu") is pipeline and pipeline.device == torch.device("cpu")


@pytest.mark.parametrize("n,use_ica", [(13, True), (13, False), (1, True), (4, True)])
def test_n_frames_in_n_frames_out(pipeline, n, use_ica):
    out = pipeline(np.full((64, 64, 3), 128, np.uint8), motion_of(n), num_inference_steps=2, use_ica=use_ica,
                   generator=seeded())
    assert out.frames.shape == (n, 64, 64, 3) and out.frames.dtype == np.float32
    assert 0 <= out.frames.min() and out.frames.max() <= 1
    assert out.renders.shape == (n, 64, 64) and (out.renders > 0).any()
    expected = list(range(n)) if n == 1 else [first for _, first in clip_windows(n, 6, 1 if use_ica else 0)]
    assert out.clip_starts == expected


def test_streaming_gives_the_same_frames_clip_by_clip(pipeline):
    motion = motion_of(13)
    whole = pipeline(crop(), motion, num_inference_steps=2, generator=seeded(3))
    clips = list(pipeline.generate_clips(crop(), motion, num_inference_steps=2, generator=seeded(3)))
    assert [c.start for c in clips] == whole.clip_starts == [0, 6, 11]
    assert [len(c) for c in clips] == [6, 5, 2]  # F = 6, then F - k = 5 new frames, then the rest
    assert np.array_equal(np.concatenate([c.frames for c in clips]), whole.frames)
    assert np.array_equal(np.concatenate([c.renders for c in clips]), whole.renders)
    assert np.array_equal(whole.renders, pipeline.render(motion))  # I_R rendered clip by clip = all at once


def test_batching_does_not_change_the_result(pipeline):
    for n, use_ica in ((3, True), (13, False)):  # 3 frames with one driving frame each = image mode below
        motion = motion_of(n) if use_ica is False else motion_of(1)
        one = pipeline(crop(1), motion, num_inference_steps=2, use_ica=use_ica, generator=seeded()).frames
        many = pipeline(crop(1), motion, num_inference_steps=2, use_ica=use_ica, batch_size=3,
                        generator=seeded()).frames
        assert np.abs(one - many).max() < 1e-5


def test_seeding_latents_and_schedulers(pipeline):
    motion = motion_of(3)
    a = pipeline(crop(), motion, num_inference_steps=2, generator=seeded(5)).frames
    b = pipeline(crop(), motion, num_inference_steps=2, generator=[seeded(5)]).frames
    c = pipeline(crop(), motion, num_inference_steps=2, generator=seeded(6)).frames
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # The initial noise given as latents: the same as drawing it from the generator.
    noise = torch.randn((6, 4, 16, 16), generator=seeded(5))
    assert np.array_equal(pipeline(crop(), motion, num_inference_steps=2, latents=noise).frames, a)
    saved = pipeline.scheduler
    try:
        for name, cls in SCHEDULERS.items():
            pipeline.scheduler = cls.from_config(saved.config)
            assert pipeline(crop(), motion, num_inference_steps=2, generator=seeded()).frames.shape == a.shape
    finally:
        pipeline.scheduler = saved
    with pytest.raises(Exception, match=r"\(64, 64, 3\) uint8"):
        pipeline(crop()[:32], motion)
    with pytest.raises(Exception, match="one generator per frame"):
        pipeline(crop(), motion_of(1), generator=[seeded(), seeded()])


def test_output_types_and_return_dict(pipeline):
    motion = motion_of(2)
    kwargs = {"num_inference_steps": 1}
    np_frames = pipeline(crop(), motion, generator=seeded(), **kwargs).frames
    pt = pipeline(crop(), motion, generator=seeded(), output_type="pt", **kwargs).frames
    pil = pipeline(crop(), motion, generator=seeded(), output_type="pil", **kwargs).frames
    latent = pipeline(crop(), motion, generator=seeded(), output_type="latent", **kwargs).frames
    assert pt.shape == (2, 3, 64, 64) and np.allclose(pt.permute(0, 2, 3, 1).numpy(), np_frames)
    assert len(pil) == 2 and isinstance(pil[0], Image.Image) and np.array_equal(np.asarray(pil[1]), to_uint8(np_frames)[1])
    assert latent.shape == (2, 4, 16, 16)
    frames, renders, starts = pipeline(crop(), motion, generator=seeded(), return_dict=False, **kwargs)
    assert np.array_equal(frames, np_frames) and renders.shape == (2, 64, 64) and starts == [0]
    with pytest.raises(Exception, match="output_type"):
        pipeline(crop(), motion, output_type="gif")


def test_step_callback_sees_every_step_of_every_clip_and_can_interrupt(pipeline):
    seen = []

    def record(pipe, step, timestep, kwargs):
        seen.append((pipe.clip_index, step, tuple(kwargs["latents"].shape)))
        return kwargs

    pipeline(crop(), motion_of(13), num_inference_steps=2, generator=seeded(), callback_on_step_end=record)
    assert [(c, s) for c, s, _ in seen] == [(c, s) for c in range(3) for s in range(2)]  # 3 clips x 2 steps
    assert seen[0][2] == (1, 6, 4, 16, 16)

    def zero(pipe, step, timestep, kwargs):  # replacing the latents changes the result
        return {"latents": torch.zeros_like(kwargs["latents"])}

    base = pipeline(crop(), motion_of(2), num_inference_steps=2, generator=seeded(), output_type="latent").frames
    zeroed = pipeline(crop(), motion_of(2), num_inference_steps=2, generator=seeded(), output_type="latent",
                      callback_on_step_end=zero).frames
    assert not torch.equal(base, zeroed) and torch.count_nonzero(zeroed) == 0

    def stop(pipe, step, timestep, kwargs):
        if pipe.clip_index == 1:
            pipe._interrupt = True
        return kwargs

    clips = list(pipeline.generate_clips(crop(), motion_of(13), num_inference_steps=2, generator=seeded(),
                                         callback_on_step_end=stop))
    assert [c.clip_index for c in clips] == [0]  # the second clip was stopped, nothing after it


def test_save_pretrained_round_trip_and_one_clear_line_for_wrong_folders(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "copy")
    assert {p.name for p in (tmp_path / "copy").iterdir()} == {"model_index.json", "model", "vae", "scheduler"}
    loaded = MIMAFacePipeline.from_pretrained(tmp_path / "copy")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.clip_length == 6 and loaded.config.overlap == 1
    a = pipeline(crop(), motion_of(7), num_inference_steps=2, generator=seeded()).frames
    assert np.array_equal(loaded(crop(), motion_of(7), num_inference_steps=2, generator=seeded()).frames, a)
    for folder, message in ((tmp_path / "missing", "does not exist"), (tmp_path / "copy" / "model_index.json", "is a file"),
                            (tmp_path / "copy" / "vae", "no model_index.json")):
        with pytest.raises(Exception, match=message) as error:
            MIMAFacePipeline.from_pretrained(folder)
        assert "\n" not in str(error.value)


def test_bfloat16_on_the_cpu_is_close_to_float32(checkpoint):
    fp32 = MIMAFacePipeline.from_pretrained(checkpoint)
    bf16 = MIMAFacePipeline.from_pretrained(checkpoint, dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16 and bf16.vae.dtype == torch.bfloat16
    for pipe in (fp32, bf16):
        pipe.set_progress_bar_config(disable=True)
    a = fp32(crop(), motion_of(7), num_inference_steps=2, generator=seeded()).frames
    b = bf16(crop(), motion_of(7), num_inference_steps=2, generator=seeded()).frames
    # bf16 keeps 8 bits of mantissa: frames agree to a few grey levels on average (random weights,
    # so this is the numerical noise of the network, not of a trained model).
    print(f"bf16 vs fp32: mean |diff| {np.abs(a - b).mean() * 255:.2f} grey levels, max {np.abs(a - b).max() * 255:.1f}")
    assert np.abs(a - b).mean() * 255 < 3.0


def test_fp16_vae_is_upcast_as_diffusers_does(checkpoint):
    pipe = MIMAFacePipeline.from_pretrained(checkpoint)
    assert pipe._vae_dtype() == torch.float32
    pipe.vae.to(torch.float16)
    assert pipe.vae.config.force_upcast and pipe._vae_dtype() == torch.float32
    pipe.vae.register_to_config(force_upcast=False)
    assert pipe._vae_dtype() == torch.float16


def test_model_cpu_offload_runs_in_order_and_changes_nothing(checkpoint):
    reference = MIMAFacePipeline.from_pretrained(checkpoint)
    reference.set_progress_bar_config(disable=True)
    expected = reference(crop(), motion_of(7), num_inference_steps=2, generator=seeded()).frames
    pipe = MIMAFacePipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")  # no accelerator here: the hooks move cpu -> cpu
    calls = []
    for name in ("model", "vae"):
        hook = getattr(pipe, name)._hf_hook
        pre_forward = hook.pre_forward
        hook.pre_forward = lambda module, *a, _name=name, _pre=pre_forward, **k: (calls.append(_name), _pre(module, *a, **k))[1]
    out = pipe(crop(), motion_of(7), num_inference_steps=2, generator=seeded()).frames
    assert np.array_equal(out, expected)
    # Per clip: the VAE encodes I_R, the model (CLIP, MIA, UNet steps) denoises, the VAE decodes.
    runs = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert runs[:4] == ["model", "vae", "model", "vae"] and set(runs) == {"model", "vae"}


def test_to_uint8_clips_scales_and_rounds_half_to_even():
    values = np.concatenate([np.linspace(-0.5, 1.5, 4001), (np.arange(256) + 0.5) / 255]).astype(np.float32)
    expected = (np.clip(values, 0.0, 1.0) * 255).round().astype(np.uint8)
    assert np.array_equal(to_uint8(values), expected)
    frames = np.random.default_rng(0).uniform(-0.2, 1.2, (3, 8, 8, 3)).astype(np.float32)
    assert np.array_equal(to_uint8(frames), (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8))
    assert to_uint8(np.zeros((0, 4, 4, 3), np.float32)).shape == (0, 4, 4, 3)
