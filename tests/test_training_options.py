"""What the sd15 scale needs on small machines: the optimizer choice, ``mixed_precision=no``, bf16 on a CPU."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from mimaface.errors import InputError
from mimaface.training.config import StageSection, load_config
from mimaface.training.trainer import build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizer_state_resumes_exactly_from_a_weights_only_file(name: str) -> None:
    """What a checkpoint does with the optimizer (torch zip, read back with weights_only=True)."""
    section = StageSection(optimizer=name, learning_rate=1e-2)
    model = _model()
    optimizer = build_optimizer(list(model.parameters()), section)
    _step(model, optimizer, 0)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    resumed = copy.deepcopy(model)
    resumed_optimizer = build_optimizer(list(resumed.parameters()), section)
    resumed_optimizer.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for seed in (1, 2):
        _step(model, optimizer, seed)
        _step(resumed, resumed_optimizer, seed)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_adafactor_takes_the_learning_rate_as_given() -> None:
    """No relative step or parameter scaling: the first update of a parameter is lr times the gradient's
    sign (its second moment is the squared gradient itself, and the update's RMS is 1)."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = build_optimizer([p], StageSection(optimizer="adafactor", learning_rate=1e-3))
    p.grad = torch.tensor([0.5, -4.0, 2.0])
    optimizer.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - 1e-3, -2.0 + 1e-3, 3.0 - 1e-3]))


def test_unknown_optimizer_is_an_input_error() -> None:
    with pytest.raises(InputError, match="stage1.optimizer must be one of adamw, adamw_8bit, adafactor"):
        load_config(None, ["stage1.optimizer=sgd"])


def test_mixed_precision_no_on_the_command_line_is_no() -> None:
    """YAML reads an unquoted no as false; mixed_precision=no means no mixed precision."""
    assert load_config(None, ["mixed_precision=no"]).mixed_precision == "no"
    assert load_config(None, ["mixed_precision=bf16"]).mixed_precision == "bf16"
    with pytest.raises(InputError, match="mixed_precision must be"):
        load_config(None, ["mixed_precision=yes"])


def test_a_bf16_appearance_encoder_resizes_the_source_on_a_cpu() -> None:
    """CLIP sees 224 px: a 128 px source is resized in fp32 (no bf16 bicubic-antialias kernel on CPUs), then cast."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mimaface.models.appearance import AppearanceEncoder
    from mimaface.models.config import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, TINY_CLIP_VISION_CONFIG

    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**{**TINY_CLIP_VISION_CONFIG, "image_size": 224, "patch_size": 32}))
    encoder = AppearanceEncoder(clip, CLIP_IMAGE_MEAN, CLIP_IMAGE_STD)
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    expected = encoder.preprocess(image)
    encoder.to(torch.bfloat16)
    pixels = encoder.preprocess(image)
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixels, expected, atol=0.02, rtol=0)  # CLIP's mean and std rounded to bf16
    e_tex, e_id = encoder(image)
    assert e_tex.dtype == torch.bfloat16 and e_tex.shape == (1, 49, 64) and e_id.shape == (1, 64)
