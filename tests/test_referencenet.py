"""The ReferenceNet comparison design (mimaface.models.referencenet) at tiny shapes."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from mimaface.models.config import MIMAFaceConfig
from mimaface.models.referencenet import ReferenceNetModel, self_attention_names


@pytest.fixture(scope="module")
def model() -> ReferenceNetModel:
    torch.manual_seed(0)
    return ReferenceNetModel.from_config(MIMAFaceConfig.tiny()).eval()


def _inputs(b: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"noisy_latents": torch.randn(b, 4, 16, 16, generator=g), "timesteps": torch.full((b,), 500),
            "render_latents": torch.randn(b, 4, 16, 16, generator=g),
            "source_latents": torch.randn(b, 4, 16, 16, generator=g), "source_image": torch.rand(b, 3, 64, 64, generator=g)}


def test_every_self_attention_reads_the_reference_of_the_same_place(model: ReferenceNetModel) -> None:
    with torch.no_grad():
        model(**_inputs())
    names = self_attention_names(model.denoiser.unet)
    assert names and sorted(model.bank.features) == sorted(names)
    assert names == self_attention_names(model.reference_unet)
    for name in names:  # the token count and width of the denoiser's layer at that place
        assert model.bank.features[name].shape[0] == 1 and model.bank.features[name].ndim == 3


def test_reference_features_reach_the_denoiser(model: ReferenceNetModel) -> None:
    a, b = _inputs(seed=1), _inputs(seed=1)
    b["source_latents"] = torch.randn_like(a["source_latents"])  # only the reference latent differs
    with torch.no_grad():
        out_a, out_b = model(**a), model(**b)
        again = model(a["noisy_latents"], a["timesteps"], a["render_latents"])  # reads the last reference: b's
    assert (out_a - out_b).abs().max() > 1e-3
    assert torch.equal(again, out_b)


def test_attending_to_a_copy_of_itself_is_plain_self_attention(model: ReferenceNetModel) -> None:
    """Keys and values [k(x); k(x)] give softmax weights that sum the same values twice as often: the
    output of plain self-attention. With the denoiser's own input as the reference (same latent, t = 0,
    condition; the render channels' conv_in weights are zero) the model computes the plain UNet."""
    plain = copy.deepcopy(model.reference_unet)
    plain.set_attn_processor(AttnProcessor2_0())
    x = _inputs()
    zero = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        ours = model(x["source_latents"], zero, x["render_latents"], x["source_latents"], x["source_image"])
        expected = plain(x["source_latents"], zero, model.image_condition(x["source_image"])).sample
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_a_batch_reads_each_reference_in_order(model: ReferenceNetModel) -> None:
    """Two noisy samples on one reference (CFG's halves, a clip's frames) = each alone."""
    x = _inputs(b=2, seed=3)
    with torch.no_grad():
        model.encode_reference(x["source_latents"][:1], x["source_image"][:1])
        both = model(x["noisy_latents"], x["timesteps"], x["render_latents"])
        first = model(x["noisy_latents"][:1], x["timesteps"][:1], x["render_latents"][:1])
        second = model(x["noisy_latents"][1:], x["timesteps"][1:], x["render_latents"][1:])
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot read"):
        model.encode_reference(x["source_latents"], x["source_image"])  # 2 references
        model(x["noisy_latents"][:1], x["timesteps"][:1], x["render_latents"][:1])


def test_gradients_reach_exactly_the_parameters_that_train() -> None:
    torch.manual_seed(0)
    model = ReferenceNetModel.from_config(MIMAFaceConfig.tiny()).train()
    trainable = {id(p) for p in model.set_trainable()}
    loss = model(**_inputs(b=2)).square().mean()
    loss.backward()
    names = {name: p for name, p in model.named_parameters()}
    with_grad = {name for name, p in names.items() if p.grad is not None and p.grad.abs().sum() > 0}
    should = {name for name, p in names.items() if id(p) in trainable}
    # conv_in's render weights start at zero but get gradients; every trainable parameter is reached.
    assert with_grad == should
    last = f"reference_unet.up_blocks.{len(model.reference_unet.up_blocks) - 1}."
    frozen = ("image_encoder.", last, "reference_unet.conv_norm_out.", "reference_unet.conv_out.", "denoiser.w_cond.")
    assert not any(n.startswith(frozen) for n in should)
    assert all(n in should for n in names if n.startswith(("denoiser.unet.", "reference_unet.down_blocks.",
                                                            "reference_unet.mid_block.")))


def test_a_denoiser_without_a_reference_is_an_error() -> None:
    torch.manual_seed(0)
    model = ReferenceNetModel.from_config(MIMAFaceConfig.tiny())
    x = _inputs()
    with pytest.raises(RuntimeError, match="no reference"):
        model(x["noisy_latents"], x["timesteps"], x["render_latents"])
