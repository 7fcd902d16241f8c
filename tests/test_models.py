"""The MIMAFace network: shapes at both scales, zero-init equivalence, gradients per stage, the
identity loss and memory bank, ICA sampling, loading/saving through the user's path, overfitting."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from mimaface.errors import InputError, MimafaceError
from mimaface.models import (
    IdentityContrastiveLoss,
    IdentityLossConfig,
    IdentityMemoryBank,
    MIMAFaceConfig,
    MIMAFaceModel,
    ModelLoadError,
    PhotometricAugment,
    sample_ica_condition,
)
from mimaface.models.config import (
    ANIMATEDIFF_V3_ADAPTER_CONFIG,
    CLIP_VIT_L14_VISION_CONFIG,
    SD15_UNET_CONFIG,
    TINY_VAE_CONFIG,
    AugmentConfig,
    ICAConfig,
)
from mimaface.models.ica import ica_condition_from_previous, max_conditioning_frames
from mimaface.models.identity_loss import info_nce
from mimaface.models.unet import ConditionedUNet, motion_modules

K = 36  # blendshapes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared, busy 2-core machine
    OpenMP's spinning threads make them 50x slower (4 s -> 230 s for the overfit test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**overrides) -> MIMAFaceConfig:
    """The tiny scale with a 32-px, 32-wide CLIP (16 patch tokens) to keep CPU tests fast."""
    base = {"appearance_encoder": {"image_size": 32, "hidden_size": 32, "intermediate_size": 64},
            "identity": {"bank_size": 16, "head_hidden_dim": 32, "head_dim": 16}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return MIMAFaceConfig.tiny(**base)


def coefficients(b: int, f: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lead = (b,) if f is None else (b, f)
    pose = torch.cat([torch.rand(*lead, 3, generator=g) * 40 - 20, torch.rand(*lead, 2, generator=g) * 0.2 - 0.1,
                      0.7 + 0.3 * torch.rand(*lead, 1, generator=g)], -1)
    return pose, torch.rand(*lead, K, generator=g), torch.rand(*lead, 4, generator=g) * 0.2 - 0.1


def inputs(model: MIMAFaceModel, b: int, f: int | None = None, size: int = 8, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = model.config.latent_channels
    lead = (b,) if f is None else (b, f)
    noisy = torch.randn(*lead, c, size, size, generator=g)
    render = torch.randn(*lead, c, size, size, generator=g)
    source = torch.rand(b, 3, 48, 48, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    pose, expression, gaze = coefficients(b, f, seed)
    out = {"noisy_latents": noisy, "timesteps": t, "render_latents": render, "source_image": source, "pose": pose,
           "expression": expression, "gaze": gaze}
    return {k: v.to(device) for k, v in out.items()}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- real configs, sd15 scale


def test_real_configs_parameter_counts(capsys):
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        clip = CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L14_VISION_CONFIG))
        adapter = MotionAdapter(**ANIMATEDIFF_V3_ADAPTER_CONFIG)
    counts = {"SD-1.5 UNet": n_params(unet), "CLIP ViT-L/14 vision": n_params(clip),
              "AnimateDiff v3 motion adapter": n_params(adapter)}
    with capsys.disabled():
        print()
        for name, count in counts.items():
            print(f"  {name}: {count:,} parameters ({count / 1e6:.1f} M)")
    assert abs(counts["SD-1.5 UNet"] - 859.5e6) / 859.5e6 < 0.001
    assert abs(counts["CLIP ViT-L/14 vision"] - 304e6) / 304e6 < 0.01
    assert 350e6 < counts["AnimateDiff v3 motion adapter"] < 500e6


def test_sd15_model_shapes_on_meta_device(capsys):
    config = MIMAFaceConfig.sd15()
    with torch.device("meta"):
        model = MIMAFaceModel(config).eval()
    assert model.unet.conv_in.in_channels == 8 and model.unet.config.in_channels == 8
    assert n_params(model.unet) == 859_520_964 + 4 * 320 * 9  # the render channels' zero weights
    assert model.w_cond.in_channels == 5 and model.w_cond.out_channels == 320
    assert model.condition_length == 257 and config.cross_attention_dim == 768
    with capsys.disabled():
        print(f"\n  MIMAFace sd15: {n_params(model) / 1e6:.1f} M parameters (UNet {n_params(model.unet) / 1e6:.1f} M, "
              f"CLIP {n_params(model.clip) / 1e6:.1f} M, motion {n_params(model.motion_adapter) / 1e6:.1f} M, "
              f"MIA {n_params(model.mia) / 1e6:.1f} M, identity head {n_params(model.identity) / 1e6:.2f} M)")

    # images: 512 px -> 64x64 latents; the source at 256 px is resized to CLIP's 224
    args = inputs(model, 2, size=64, device="meta")
    args["source_image"] = torch.rand(2, 3, 256, 256, device="meta")
    out = model(**args, return_dict=True)
    assert out.sample.shape == (2, 4, 64, 64) and out.sample.device.type == "meta"
    assert out.condition.shape == (2, 257, 768) and out.id_token.shape == (2, 1024)
    # a 12-frame clip (the paper's clip length) with ICA conditioning, at 32x32 latents
    args = inputs(model, 1, 12, size=32, device="meta")
    ica = sample_ica_condition(torch.zeros(1, 12, 4, 32, 32, device="meta"), config.ica, num_given=torch.tensor([3]))
    out = model(**args, ica_latents=ica.latents, ica_mask=ica.mask, return_dict=True)
    assert out.sample.shape == (1, 12, 4, 32, 32) and out.condition.shape == (12, 257, 768)
    assert model.null_condition(2).shape == (2, 257, 768)
    assert model.null_condition(2, 12).shape == (2, 12, 257, 768)


# ----------------------------------------------------------------------------- tiny scale


def test_tiny_shapes_for_images_and_clips():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config()).eval()
    args = inputs(model, 2)
    appearance = model.encode_appearance(args["source_image"], args["pose"], args["expression"], args["gaze"])
    assert appearance.condition.shape == (2, 17, 64)  # 16 patches + e_id, UNet width 64
    assert appearance.id_token.shape == (2, 32) and appearance.texture_tokens.shape == (2, 16, 32)
    assert model(**args).shape == (2, 4, 8, 8)

    args = inputs(model, 2, 5)
    out = model(**args, return_dict=True)
    assert out.sample.shape == (2, 5, 4, 8, 8) and out.condition.shape == (10, 17, 64)
    clip_condition = model.encode_appearance(args["source_image"], args["pose"], args["expression"], args["gaze"])
    assert clip_condition.condition.shape == (2, 5, 17, 64)
    # per-frame motion gives per-frame conditions (once the modulation is not zero)
    torch.nn.init.normal_(model.mia.modulation.attn.to_out[0].weight)
    c = model.encode_appearance(args["source_image"], args["pose"], args["expression"], args["gaze"]).condition
    assert not torch.allclose(c[:, 0], c[:, 1])
    # ICA: masks as (B, F) or (B, F, 1, h, w); a clip longer than the motion modules' table is refused
    ica = sample_ica_condition(torch.randn(2, 5, 4, 8, 8), num_given=torch.tensor([1, 0]))
    a = model(**args, ica_latents=ica.latents, ica_mask=ica.mask)
    b = model(**args, ica_latents=ica.latents, ica_mask=ica.mask[:, :, 0, 0, 0])
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="exceed"):
        model(**inputs(model, 1, 33))


def test_zero_initialised_parts_reproduce_the_plain_unet():
    torch.manual_seed(0)
    config = small_config()
    plain = UNet2DConditionModel(**config.unet).eval()
    model = MIMAFaceModel(config, unet=copy.deepcopy(plain)).eval()
    args = inputs(model, 2)
    condition = torch.randn(2, model.condition_length, config.cross_attention_dim)
    ica = sample_ica_condition(torch.randn(2, 1, 4, 8, 8), num_given=torch.tensor([1, 1]))
    with torch.no_grad():
        expected = plain(args["noisy_latents"], args["timesteps"], condition).sample
        # render channels + W_cond (with a non-zero ICA input) + condition path
        ours = model(args["noisy_latents"], args["timesteps"], args["render_latents"], condition=condition,
                     ica_latents=ica.latents[:, 0], ica_mask=ica.mask[:, 0])
        assert torch.equal(ours, expected)  # exactly: extra zero weights add exact zeros
        # fresh motion modules (zero output projections): a clip equals its frames run as images
        clip_args = inputs(model, 2, 3)
        frames = {k: (v.flatten(0, 1) if k in ("noisy_latents", "render_latents") else v)
                  for k, v in clip_args.items()}
        as_images = model(frames["noisy_latents"], clip_args["timesteps"].repeat_interleave(3),
                          frames["render_latents"], condition=condition.repeat(3, 1, 1)[:6])
        as_clip = model(clip_args["noisy_latents"], clip_args["timesteps"], clip_args["render_latents"],
                        condition=condition.repeat(3, 1, 1)[:6].view(2, 3, *condition.shape[1:]))
        assert torch.equal(as_clip.flatten(0, 1), as_images)
        # the MIA residual: e'_tex == e_tex exactly
        e_tex, _ = model.encode_source(args["source_image"])
        coefs = model.mia.normalize_coefficients(args["pose"], args["expression"], args["gaze"])
        assert torch.equal(model.mia.modulate(e_tex, coefs), e_tex)
    # the widened conv_in keeps the pretrained weights and adds zeros
    assert torch.equal(model.unet.conv_in.weight[:, :4], plain.conv_in.weight)
    assert not model.unet.conv_in.weight[:, 4:].any() and not model.w_cond.weight.any()


def test_motion_modules_run_where_diffusers_unet_motion_model_runs_them():
    """An AnimateDiff adapter gives the same video prediction as diffusers' own UNetMotionModel."""
    torch.manual_seed(0)
    config = small_config()
    for mid_block in (True, False):
        unet = UNet2DConditionModel(**config.unet).eval()
        adapter = MotionAdapter(**{**config.motion_adapter, "use_motion_mid_block": mid_block})  # random, non-zero
        reference = UNetMotionModel.from_unet2d(copy.deepcopy(unet), copy.deepcopy(adapter)).eval()
        ours = ConditionedUNet(copy.deepcopy(unet), copy.deepcopy(adapter)).eval()
        b, f = 2, 4
        x = torch.randn(b, f, 4, 8, 8)
        cond = torch.randn(b * f, 5, config.cross_attention_dim)
        t = torch.tensor([10, 900])
        with torch.no_grad():
            expected = reference(x.transpose(1, 2), t, cond).sample.transpose(1, 2)
            got = ours(x.flatten(0, 1), t.repeat_interleave(f), cond, torch.randn(b * f, 4, 8, 8), num_frames=f)
            as_images = ours(x.flatten(0, 1), t.repeat_interleave(f), cond, torch.zeros(b * f, 4, 8, 8))
        torch.testing.assert_close(got.unflatten(0, (b, f)), expected, rtol=1e-4, atol=1e-5)
        assert (as_images.unflatten(0, (b, f)) - expected).abs().max() > 1e-2  # image mode skips them


# ----------------------------------------------------------------------------- gradients per stage


def _wake_zero_inits(model: MIMAFaceModel) -> None:
    """Give the zero-initialised parts small random values so every gradient is non-zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [model.w_cond.weight, model.mia.modulation.attn.to_out[0].weight, model.mia.null_condition,
                  model.unet.conv_in.weight] + [m.proj_out.weight for m in motion_modules(model.motion_adapter)]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _grads(model: MIMAFaceModel) -> tuple[set[str], set[str], set[str]]:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    nonzero = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return trainable, with_grad, nonzero


def test_stage1_gradients_reach_unet_clip_mia_adapter_not_motion_modules():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config()).train()
    _wake_zero_inits(model)
    model.set_stage(1)
    args = inputs(model, 2)
    out = model(**args, drop_condition=torch.tensor([False, True]), return_dict=True)
    loss = F.mse_loss(out.sample, torch.randn_like(out.sample))
    loss = loss + model.identity_loss(args["source_image"], torch.tensor([0, 1]), id_token=out.id_token)
    loss.backward()
    trainable, with_grad, nonzero = _grads(model)
    names = dict(model.named_parameters())
    for part in ("denoiser.unet.", "appearance_encoder.clip.", "mia.modulation.", "mia.adapter.",
                 "mia.null_condition", "identity.head."):
        part_names = {n for n in names if n.startswith(part)}
        assert part_names and part_names <= trainable and part_names <= nonzero, part
    frozen = {n for n in names if n.startswith(("denoiser.motion_adapter.", "denoiser.w_cond."))}
    assert frozen and not frozen & trainable and not frozen & with_grad
    assert with_grad == trainable == nonzero == set(names) - frozen


def test_stage2_gradients_reach_only_w_cond_and_motion_modules():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config()).train()
    _wake_zero_inits(model)
    params = model.set_stage(2)
    args = inputs(model, 2, 4)
    latents = torch.randn(2, 4, 4, 8, 8)
    ica = sample_ica_condition(latents, num_given=torch.tensor([1, 0]))
    out = model(**args, ica_latents=ica.latents, ica_mask=ica.mask, drop_condition=False)
    F.mse_loss(out, torch.randn_like(out)).backward()
    trainable, with_grad, nonzero = _grads(model)
    expected = {n for n, _ in model.named_parameters() if n.startswith(("denoiser.motion_adapter.", "denoiser.w_cond."))}
    assert expected and trainable == with_grad == nonzero == expected
    assert len(params) == len(expected)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("denoiser.unet."))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config()).train()
    _wake_zero_inits(model)
    model.set_stage(2)
    args = inputs(model, 1, 3)
    ica = sample_ica_condition(torch.randn(1, 3, 4, 8, 8), num_given=torch.tensor([1]))

    def grads():
        model.zero_grad()
        out = model(**args, ica_latents=ica.latents, ica_mask=ica.mask, drop_condition=False)
        out.square().mean().backward()
        return [p.grad.clone() for p in model.trainable_parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_set_stage_rejects_bad_input():
    config = small_config(motion_adapter=None)
    model = MIMAFaceModel(config)
    with pytest.raises(ValueError, match="motion modules"):
        model.set_stage(2)
    with pytest.raises(ValueError):
        model.set_stage(3)


# ----------------------------------------------------------------------------- identity loss


def _identity_tokens(seed: int = 0, identities: int = 4, per_identity: int = 4, dim: int = 32):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(identities, dim, generator=g)
    labels = torch.arange(identities).repeat_interleave(per_identity)
    tokens = centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=g)
    augmented = tokens + 0.3 * torch.randn(tokens.shape, generator=g)
    return tokens, augmented, labels


@pytest.mark.parametrize("head", ["none", "mlp"])
def test_identity_loss_is_lower_for_true_identities_than_shuffled(head):
    torch.manual_seed(0)
    loss = IdentityContrastiveLoss(IdentityLossConfig(head=head, head_hidden_dim=64, head_dim=16, bank_size=64), 32)
    tokens, augmented, labels = _identity_tokens()
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    assert not torch.equal(shuffled, labels)
    true_loss = loss(tokens, augmented, labels, enqueue=False)
    shuffled_loss = loss(tokens, augmented, shuffled, enqueue=False)
    assert true_loss < shuffled_loss
    # with a bank of other samples of the same people
    bank_tokens, _, bank_labels = _identity_tokens(seed=1)
    loss.bank.enqueue(bank_tokens, bank_labels)
    assert loss(tokens, augmented, labels, enqueue=False) < loss(tokens, augmented, shuffled, enqueue=False)


def test_info_nce_matches_equation_2():
    """One anchor, one positive, two negatives: eq. 2 by hand."""
    z = F.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 2])
    got = info_nce(z[:1], z, labels[:1], labels, temperature=0.5)
    s = z[0] @ z.t() / 0.5
    expected = -torch.log(s[1].exp() / (s[1].exp() + s[2].exp() + s[3].exp()))
    torch.testing.assert_close(got, expected)
    # no negatives at all: zero loss, finite gradient
    z.requires_grad_(True)
    loss = info_nce(z[:2], z[:2], labels[:2], labels[:2], 0.1)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(z.grad).all()


def test_memory_bank_wraps_around():
    bank = IdentityMemoryBank(5, 2)
    assert bank.valid()[0].shape == (0, 2)
    tok = lambda labels: torch.tensor(labels, dtype=torch.float32)[:, None].expand(-1, 2)
    bank.enqueue(tok([0, 1, 2]), torch.tensor([0, 1, 2]))
    assert bank.pointer.item() == 3 and bank.valid()[1].tolist() == [0, 1, 2]
    bank.enqueue(tok([3, 4, 5]), torch.tensor([3, 4, 5]))
    assert bank.labels.tolist() == [5, 1, 2, 3, 4] and bank.pointer.item() == 1
    assert bank.tokens[:, 0].tolist() == [5, 1, 2, 3, 4]
    bank.enqueue(tok(list(range(10, 17))), torch.arange(10, 17))  # more than fits: the newest 5 stay
    assert sorted(bank.labels.tolist()) == [12, 13, 14, 15, 16] and bank.pointer.item() == 1
    assert bank.labels.tolist() == [16, 12, 13, 14, 15]
    assert "bank" not in str(list(IdentityContrastiveLoss(IdentityLossConfig(bank_size=4), 2).state_dict()))


def test_identity_loss_gathers_across_processes(tmp_path):
    """Two gloo processes with different batch sizes end with identical banks holding both batches."""
    script = tmp_path / "gather.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
        from mimaface.models.identity_loss import IdentityContrastiveLoss
        from mimaface.models.config import IdentityLossConfig

        def work(rank):
            torch.set_num_threads(1)
            dist.init_process_group("gloo", init_method="file://{tmp_path / 'rendezvous'}", rank=rank, world_size=2)
            loss = IdentityContrastiveLoss(IdentityLossConfig(head="none", bank_size=8), 4).train()
            n = 2 + rank
            labels = torch.arange(n) + 10 * rank
            tokens = torch.randn(n, 4)
            value = loss(tokens, tokens + 0.1, labels)
            banks = [torch.zeros(8, dtype=torch.long) for _ in range(2)]
            dist.all_gather(banks, loss.bank.labels)
            if rank == 0:
                assert torch.equal(banks[0], banks[1]), banks
                assert sorted(banks[0][banks[0] >= 0].tolist()) == [0, 1, 10, 11, 12], banks
                assert loss.bank.pointer.item() == 5 and torch.isfinite(value)
            dist.destroy_process_group()

        if __name__ == "__main__":
            mp.spawn(work, nprocs=2)
            print("ok")
    """))
    # loopback only: the two processes talk to each other on this machine and nowhere else
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False,
                            env=env)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_model_identity_loss_enqueues_and_trains_the_head():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config()).train()
    source = torch.rand(4, 3, 32, 32)
    loss = model.identity_loss(source, torch.tensor([0, 0, 1, 1]), generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.identity.bank.valid()[1].tolist() == [0, 0, 1, 1]
    loss.backward()
    assert model.identity.head[0].weight.grad.abs().sum() > 0
    assert model.clip.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_photometric_augmentations():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 24, 24, generator=g)
    ops = {"grayscale": "grayscale_p", "color_jitter": "color_jitter_p", "contrast": "contrast_p",
           "edge_enhance": "filter_p", "blur": "filter_p", "sharpen": "filter_p", "lighting": "lighting_p",
           "noise": "noise_p", "vignette": "vignette_p"}
    none = AugmentConfig(**{op: False for op in ops})
    assert torch.equal(PhotometricAugment(none)(images), images)
    for op, p in ops.items():
        config = dataclasses.replace(none, **{op: True, p: 1.0})
        out = PhotometricAugment(config)(images, generator=torch.Generator().manual_seed(1))
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1, op
        assert (out - images).abs().mean() > 1e-3, op
        again = PhotometricAugment(config)(images, generator=torch.Generator().manual_seed(1))
        assert torch.equal(out, again), op  # reproducible with a generator
    gray = PhotometricAugment(AugmentConfig(grayscale_p=1.0))(images)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    # per-sample coins: with p = 0.5 some images change and some do not
    half = PhotometricAugment(AugmentConfig(**{**{o: False for o in ops}, "noise": True, "noise_p": 0.5}))
    changed = (half(images.repeat(4, 1, 1, 1), torch.Generator().manual_seed(2)) != images.repeat(4, 1, 1, 1))
    changed = changed.flatten(1).any(1)
    assert changed.any() and not changed.all()


# ----------------------------------------------------------------------------- ICA


def test_ica_sampling():
    latents = torch.randn(64, 12, 4, 6, 6)
    config = ICAConfig()
    assert max_conditioning_frames(12, config) == 3
    cond = sample_ica_condition(latents, config, generator=torch.Generator().manual_seed(0))
    assert set(cond.num_given.tolist()) == {0, 1, 2, 3}
    for i, k in enumerate(cond.num_given.tolist()):
        assert torch.equal(cond.mask[i, :, 0, 0, 0], (torch.arange(12) < k).float())
        assert not cond.latents[i, k:].any()
        if k:
            noise = cond.latents[i, :k] - latents[i, :k]
            assert 0.05 < noise.std() < 0.2  # sigma = 0.1
    assert cond.mask.shape == (64, 12, 1, 6, 6)

    authors = ICAConfig(k_distribution="authors")
    k = sample_ica_condition(latents, authors, generator=torch.Generator().manual_seed(0)).num_given
    assert set(k.tolist()) <= set(range(5)) and 15 < (k == 0).sum() < 50

    previous = torch.randn(2, 3, 4, 6, 6)
    inference = ica_condition_from_previous(previous, 12, torch.zeros(2, 12, 4, 6, 6))
    assert torch.equal(inference.latents[:, :3], previous) and not inference.latents[:, 3:].any()
    assert inference.mask[:, :3].eq(1).all() and not inference.mask[:, 3:].any()


# ----------------------------------------------------------------------------- variants and CFG


def test_concat_variant():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config(mia={"modulation": "concat"})).eval()
    assert model.mia.modulation is None and model.condition_length == 16 + 1 + 3
    args = inputs(model, 2, 3)
    out = model(**args, return_dict=True)
    assert out.sample.shape == (2, 3, 4, 8, 8) and out.condition.shape == (6, 20, 64)
    assert model.null_condition(1).shape == (1, 20, 64)


def test_no_modulation_variant_ignores_the_coefficients():
    """The ablation without coefficient modulation: the condition depends on the source only."""
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config(mia={"modulation": "none"})).eval()
    assert model.mia.modulation is None and model.mia.group_tokens is None and model.condition_length == 16 + 1
    args = inputs(model, 2, 3)
    out = model(**args, return_dict=True)
    assert out.sample.shape == (2, 3, 4, 8, 8) and out.condition.shape == (6, 17, 64)
    moved = dict(args, pose=args["pose"] + 5.0, expression=args["expression"].flip(-1))
    torch.testing.assert_close(model(**moved, return_dict=True).condition, out.condition)
    # whereas with eq. 1 (its zero-initialised output trained away from zero) the coefficients count
    full = MIMAFaceModel(small_config()).eval()
    with torch.no_grad():
        full.mia.modulation.attn.to_out[0].weight.normal_(0, 0.1)
    assert not torch.allclose(full(**moved, return_dict=True).condition, full(**args, return_dict=True).condition)


def test_no_render_variant_ignores_the_render():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config(render_channels=0)).eval()
    assert model.unet.conv_in.in_channels == 4
    args = inputs(model, 2)
    other = dict(args, render_latents=torch.randn_like(args["render_latents"]))
    torch.testing.assert_close(model(**other), model(**args))
    full = MIMAFaceModel(small_config()).eval()
    with torch.no_grad():
        full.unet.conv_in.weight[:, 4:].normal_(0, 0.1)  # the zero-initialised render channels, trained
    assert not torch.allclose(full(**other), full(**args))


def test_condition_dropout_uses_the_null_condition():
    torch.manual_seed(0)
    model = MIMAFaceModel(small_config(condition_dropout=1.0))
    with torch.no_grad():
        model.mia.null_condition.normal_()  # learned null: whatever it has become
    args = inputs(model, 2)
    with torch.no_grad():
        null_out = model(args["noisy_latents"], args["timesteps"], args["render_latents"],
                         condition=model.null_condition(2), drop_condition=False)
        model.train()
        dropped = model(**args, return_dict=True)  # p = 1 in training
        model.eval()
        kept = model(**args, return_dict=True)  # never in eval mode
        forced = model(**args, drop_condition=True)
    assert dropped.dropped.all() and not kept.dropped.any()
    torch.testing.assert_close(dropped.sample, null_out)
    torch.testing.assert_close(forced, null_out)
    assert not torch.allclose(kept.sample, null_out)
    zero = MIMAFaceModel(small_config(mia={"null_condition": "zero"}))
    assert not zero.null_condition(2).any() and "mia.null_condition" not in dict(zero.named_parameters())


def test_config_json_roundtrip():
    for config in (MIMAFaceConfig.tiny(), MIMAFaceConfig.sd15(), small_config(mia={"modulation": "concat"})):
        data = json.loads(json.dumps(config.to_dict()))
        assert MIMAFaceConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown"):
        MIMAFaceConfig.tiny(nonsense=1)
    # the VAE config hook: the tiny VAE maps 64 px to 16x16 latents with the UNet's 4 channels
    config = MIMAFaceConfig.tiny()
    vae = AutoencoderKL(**config.vae)
    latents = vae.encode(torch.rand(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, config.latent_channels, 16, 16) and config.vae_scale_factor == 4


# ----------------------------------------------------------------------------- loading and saving


def _original_animatediff_state(adapter: MotionAdapter) -> dict[str, torch.Tensor]:
    """The adapter's weights under AnimateDiff's original key names (as in v3_sd15_mm.ckpt)."""
    import re

    out = {}
    for key, value in adapter.state_dict().items():
        if key.endswith(".pe"):
            continue
        key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        key = (key.replace(".norm1", ".norms.0").replace(".norm2", ".norms.1").replace(".norm3", ".ff_norm")
               .replace(".attn1", ".attention_blocks.0").replace(".attn2", ".attention_blocks.1"))
        out[key] = value.clone()
        if key.endswith("attention_blocks.0.to_q.weight"):
            out[key.replace("to_q.weight", "pos_encoder.pe")] = torch.zeros(1, 32, value.shape[1])
    return out


@pytest.fixture(scope="module")
def component_folders(tmp_path_factory):
    """Tiny components with SD-1.5's structure, saved the way users have them on disk."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("components")
    config = small_config()
    unet = UNet2DConditionModel(**config.unet)
    sd = root / "sd15"
    unet.save_pretrained(sd / "unet")
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(sd / "vae")
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    clip_full = CLIPModel(CLIPConfig(vision_config=config.appearance_encoder,
                                     text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                                  "num_attention_heads": 4, "vocab_size": 64, "bos_token_id": 0,
                                                  "eos_token_id": 1, "pad_token_id": 1},
                                     projection_dim=16))
    clip_full.save_pretrained(root / "clip")  # a whole CLIPModel, like openai/clip-vit-large-patch14
    adapter = MotionAdapter(**config.motion_adapter)  # random: distinguishable from a fresh, zeroed one
    adapter.save_pretrained(root / "motion")
    torch.save(_original_animatediff_state(adapter), root / "mm_original.ckpt")
    return {"root": root, "config": config, "unet": unet, "clip": clip_full, "adapter": adapter}


def test_from_components_then_save_and_load(component_folders, tmp_path):
    c = component_folders
    root = c["root"]
    model = MIMAFaceModel.from_components(root / "sd15", root / "clip", root / "motion", config=c["config"])
    assert torch.equal(model.unet.conv_in.weight[:, :4], c["unet"].conv_in.weight)
    assert torch.equal(model.unet.up_blocks[1].attentions[0].proj_out.weight, c["unet"].up_blocks[1].attentions[0].proj_out.weight)
    vision = c["clip"].vision_model if hasattr(c["clip"], "vision_model") else c["clip"]
    assert torch.equal(model.clip.state_dict()[next(k for k in model.clip.state_dict() if "patch_embedding" in k)],
                       vision.embeddings.patch_embedding.weight)
    for mine, theirs in zip(model.motion_adapter.parameters(), c["adapter"].parameters()):
        assert torch.equal(mine, theirs)
    assert model.config.vae["latent_channels"] == 4 and model.config.vae_scale_factor == 4

    # AnimateDiff's original checkpoint file loads to the same weights
    from_file = MIMAFaceModel.from_components(root / "sd15", root / "clip", root / "mm_original.ckpt", config=c["config"])
    for mine, theirs in zip(from_file.motion_adapter.state_dict().values(), c["adapter"].state_dict().values()):
        assert torch.equal(mine, theirs)

    # no adapter given: fresh, zero-output motion modules
    fresh = MIMAFaceModel.from_components(root / "sd15", root / "clip", config=c["config"])
    assert all(not m.proj_out.weight.any() for m in motion_modules(fresh.motion_adapter))

    torch.manual_seed(1)
    _wake_zero_inits(model)
    args = inputs(model, 2, 3)
    ica = sample_ica_condition(torch.randn(2, 3, 4, 8, 8), num_given=torch.tensor([1, 0]))
    model.eval()
    with torch.no_grad():
        before = model(**args, ica_latents=ica.latents, ica_mask=ica.mask)
    model.save_pretrained(tmp_path / "model")
    for part in ("mimaface_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "appearance_encoder/model.safetensors", "motion_adapter/diffusion_pytorch_model.safetensors",
                 "mia/model.safetensors", "w_cond/model.safetensors", "identity_head/model.safetensors"):
        assert (tmp_path / "model" / part).is_file(), part
    assert json.loads((tmp_path / "model" / "unet" / "config.json").read_text())["in_channels"] == 8
    loaded = MIMAFaceModel.from_pretrained(tmp_path / "model")
    with torch.no_grad():
        after = loaded(**args, ica_latents=ica.latents, ica_mask=ica.mask)
    assert torch.equal(before, after)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    from mimaface import MIMAFaceModel as TopLevel
    assert TopLevel is MIMAFaceModel


def _load_error(call) -> str:
    with pytest.raises(ModelLoadError) as info:
        call()
    assert isinstance(info.value, InputError) and isinstance(info.value, MimafaceError)
    message = str(info.value)
    assert "\n" not in message and "expected" in message
    return message


def test_loading_errors_name_what_is_expected(component_folders, tmp_path):
    c = component_folders
    root, config = c["root"], c["config"]
    sd, clip = root / "sd15", root / "clip"
    msg = _load_error(lambda: MIMAFaceModel.from_components(tmp_path / "nowhere", clip, config=config))
    assert "does not exist" in msg and "Stable Diffusion 1.5" in msg
    (tmp_path / "empty").mkdir()
    msg = _load_error(lambda: MIMAFaceModel.from_components(tmp_path / "empty", clip, config=config))
    assert "unet" in msg
    msg = _load_error(lambda: MIMAFaceModel.from_components(sd, sd / "unet", config=config))
    assert "not a CLIP model" in msg and "clip-vit-large-patch14" in msg
    msg = _load_error(lambda: MIMAFaceModel.from_components(sd, clip, clip, config=config))
    assert "not a MotionAdapter" in msg
    msg = _load_error(lambda: MIMAFaceModel.from_components(sd, clip, tmp_path / "none.ckpt", config=config))
    assert "does not exist" in msg
    # an adapter for another UNet
    other = tmp_path / "other_adapter"
    MotionAdapter(**{**config.motion_adapter, "block_out_channels": [32, 64, 128]}).save_pretrained(other)
    msg = _load_error(lambda: MIMAFaceModel.from_components(sd, clip, other, config=config))
    assert "does not fit the UNet" in msg
    # a UNet checkpoint with weights missing: refused, not silently random
    broken = tmp_path / "broken"
    for part in ("unet", "vae"):
        (broken / part).mkdir(parents=True)
        for f in (sd / part).iterdir():
            (broken / part / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file, save_file
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if "up_blocks" not in k}, str(weights))
    msg = _load_error(lambda: MIMAFaceModel.from_components(broken, clip, config=config))
    assert "missing weights" in msg
    # saved-model folders
    msg = _load_error(lambda: MIMAFaceModel.from_pretrained(tmp_path / "empty"))
    assert "mimaface_config.json" in msg
    msg = _load_error(lambda: MIMAFaceModel.from_pretrained(tmp_path / "missing"))
    assert "does not exist" in msg


def test_top_level_import_is_lazy():
    code = ("import sys, mimaface; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
            "from mimaface import MIMAFaceModel; print(MIMAFaceModel.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "MIMAFaceModel" in result.stdout, result.stderr[-2000:]


# ----------------------------------------------------------------------------- training


def test_tiny_model_overfits_a_fixed_batch(capsys):
    """Stage 1 on a fixed batch (32x32 sources, 4x4 latents): the denoising loss falls >= 10x."""
    torch.manual_seed(0)
    config = small_config(unet={"block_out_channels": [32, 32], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 4},
                          motion_adapter=None, condition_dropout=0.0)
    config.unet["cross_attention_dim"] = 32
    model = MIMAFaceModel(config).train()
    params = model.set_stage(1)
    g = torch.Generator().manual_seed(0)
    b = 4
    x0 = torch.randn(b, 4, 4, 4, generator=g)
    render = torch.randn(b, 4, 4, 4, generator=g)
    noise = torch.randn(b, 4, 4, 4, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    alpha_bar = torch.cos(t.float() / 1000 * torch.pi / 2).pow(2).view(b, 1, 1, 1)
    noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    source = torch.rand(b, 3, 32, 32, generator=g)
    pose, expression, gaze = coefficients(b)
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    start = time.perf_counter()
    losses = []
    for _ in range(200):
        prediction = model(noisy, t, render, source, pose, expression, gaze)
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    first, last = losses[0], sum(losses[-10:]) / 10
    with capsys.disabled():
        print(f"\n  overfit: denoising loss {first:.4f} -> {last:.2e} (>= {min(first / last, 1e6):.0f}x) "
              f"in 200 steps, {elapsed:.1f} s")
    assert first / last >= 10
