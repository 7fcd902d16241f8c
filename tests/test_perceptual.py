"""LPIPS, FID and the Fréchet distance, with random weights saved in the standard files' key layouts.

The expected layouts are taken from torchvision's models/alexnet.py, models/vgg.py (configuration "D") and
models/inception.py, pytorch-fid's src/pytorch_fid/inception.py and lpips' lpips/lpips.py.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimaface.errors import InputError, ModelLoadError
from mimaface.evaluation.perceptual import (
    LPIPS,
    FIDInceptionV3,
    PerceptualWeightsError,
    feature_statistics,
    fid,
    frechet_distance,
    frechet_distance_of_features,
    inception_features,
)

# conv index in `features` -> weight shape
ALEXNET_CONVS = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
VGG16_CONVS = {
    0: (64, 3, 3, 3), 2: (64, 64, 3, 3),
    5: (128, 64, 3, 3), 7: (128, 128, 3, 3),
    10: (256, 128, 3, 3), 12: (256, 256, 3, 3), 14: (256, 256, 3, 3),
    17: (512, 256, 3, 3), 19: (512, 512, 3, 3), 21: (512, 512, 3, 3),
    24: (512, 512, 3, 3), 26: (512, 512, 3, 3), 28: (512, 512, 3, 3),
}  # fmt: skip
CONVS = {"alex": ALEXNET_CONVS, "vgg": VGG16_CONVS}
LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}

# Inception3 (aux_logits=False) with pytorch-fid's blocks: block -> its BasicConv2d children
INCEPTION_A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
               "branch_pool"]  # fmt: skip
INCEPTION_B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
INCEPTION_C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
               "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"]  # fmt: skip
INCEPTION_D = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]
INCEPTION_E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
               "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]  # fmt: skip
INCEPTION_CONVS = (
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    + [f"{b}.{c}" for b in ("Mixed_5b", "Mixed_5c", "Mixed_5d") for c in INCEPTION_A]
    + [f"Mixed_6a.{c}" for c in INCEPTION_B]
    + [f"{b}.{c}" for b in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e") for c in INCEPTION_C]
    + [f"Mixed_7a.{c}" for c in INCEPTION_D]
    + [f"{b}.{c}" for b in ("Mixed_7b", "Mixed_7c") for c in INCEPTION_E]
)
BASIC_CONV_TENSORS = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                      "bn.num_batches_tracked"]  # fmt: skip


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights that keep activations at a usable scale through deep networks."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
    return module


def backbone_state(net: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full torchvision-style checkpoint: `features.*` plus classifier keys LPIPS does not use."""
    state = dict(randomise(LPIPS(net).backbone, seed).state_dict())
    return state | {"classifier.1.weight": torch.randn(16, 8), "classifier.1.bias": torch.randn(16)}


def linear_state(net: str, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS[net])}


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict, dict]]:
    folder = tmp_path_factory.mktemp("lpips")
    files = {}
    for net, name in (("alex", "alexnet-owt-7be5be79.pth"), ("vgg", "vgg16-397923af.pth")):
        backbone, linear = backbone_state(net), linear_state(net)
        (folder / net).mkdir()
        torch.save(backbone, folder / name)
        torch.save(linear, folder / net / f"{net}.pth")
        files[net] = (folder / name, folder / net / f"{net}.pth", backbone, linear)
    return files


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Saved without BatchNorm's num_batches_tracked, which loading must not require."""
    state = {k: v for k, v in randomise(FIDInceptionV3(), 2).state_dict().items()
             if not k.endswith("num_batches_tracked")}  # fmt: skip
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def inception(inception_file: tuple[Path, dict]) -> FIDInceptionV3:
    return FIDInceptionV3.from_file(inception_file[0])


# ----------------------------------------------------------------------------------------------------------------
# key layouts


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_key_layout_is_torchvisions_and_lpips(net: str) -> None:
    model = LPIPS(net)
    shapes = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    expected = {f"features.{i}.weight": s for i, s in CONVS[net].items()}
    expected |= {f"features.{i}.bias": (s[0],) for i, s in CONVS[net].items()}
    assert shapes == expected
    assert {k: tuple(v.shape) for k, v in model.linear.state_dict().items()} == {
        f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS[net])
    }


def test_alexnet_and_vgg_known_keys() -> None:
    assert LPIPS("alex").backbone.state_dict()["features.10.weight"].shape == (256, 256, 3, 3)
    assert LPIPS("vgg").backbone.state_dict()["features.28.weight"].shape == (512, 512, 3, 3)


def test_inception_key_layout_is_pytorch_fids() -> None:
    state = FIDInceptionV3().state_dict()
    assert len(INCEPTION_CONVS) == 94
    assert set(state) == {f"{c}.{t}" for c in INCEPTION_CONVS for t in BASIC_CONV_TENSORS} | {"fc.weight", "fc.bias"}
    assert len(state) == 566
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["fc.bias"].shape == (1008,)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_6e.branch7x7dbl_5.bn.running_var"].shape == (192,)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6a.branch3x3.conv.weight"].shape == (384, 288, 3, 3)
    assert state["Mixed_7a.branch3x3_2.conv.weight"].shape == (320, 192, 3, 3)
    assert state["Mixed_7b.branch1x1.conv.weight"].shape == (320, 1280, 1, 1)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert FIDInceptionV3().Conv2d_1a_3x3.bn.eps == 0.001


# ----------------------------------------------------------------------------------------------------------------
# LPIPS


def reference_lpips(net: str, backbone: dict, linear: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out with functional ops on the raw state dicts."""

    def conv(x: torch.Tensor, i: int, stride: int = 1, padding: int = 1) -> torch.Tensor:
        return F.relu(F.conv2d(x, backbone[f"features.{i}.weight"], backbone[f"features.{i}.bias"], stride, padding))

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(
            1, 3, 1, 1
        )
        if net == "alex":  # relu1 .. relu5
            r1 = conv(x, 0, stride=4, padding=2)
            r2 = conv(F.max_pool2d(r1, 3, 2), 3, padding=2)
            r3 = conv(F.max_pool2d(r2, 3, 2), 6)
            r4 = conv(r3, 8)
            return [r1, r2, r3, r4, conv(r4, 10)]
        out = []  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        for stage in ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)):
            if out:
                x = F.max_pool2d(x, 2, 2)
            for i in stage:
                x = conv(x, i)
            out.append(x)
        return out

    total = torch.zeros(len(a))
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b), strict=True)):
        na = fa / (torch.sqrt((fa**2).sum(1, keepdim=True)) + 1e-10)
        nb = fb / (torch.sqrt((fb**2).sum(1, keepdim=True)) + 1e-10)
        total += ((na - nb) ** 2 * linear[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    smooth = F.interpolate(torch.rand(n, 3, size // 8, size // 8), size=(size, size), mode="bilinear")
    return (smooth * 2 - 1).clamp(-1, 1)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_loads_the_files_and_matches_the_formula(net: str, lpips_files: dict) -> None:
    backbone_path, linear_path, backbone, linear = lpips_files[net]
    model = LPIPS.from_files(net, backbone=backbone_path, linear=linear_path)
    assert not model.training
    assert torch.equal(model.backbone.state_dict()["features.0.weight"], backbone["features.0.weight"])
    assert torch.equal(model.linear.state_dict()["lin4.model.1.weight"], linear["lin4.model.1.weight"])
    a, b = images(3, seed=0), images(3, seed=1)
    d = model(a, b)
    assert d.shape == (3,)
    assert (d > 0).all()
    torch.testing.assert_close(d, reference_lpips(net, backbone, linear, a, b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_a_distance_that_grows_with_noise(net: str, lpips_files: dict) -> None:
    model = LPIPS.from_files(net, backbone=lpips_files[net][0], linear=lpips_files[net][1])
    a, b = images(2, seed=3), images(2, seed=4)
    assert model(a, a).abs().max() < 1e-6
    torch.testing.assert_close(model(a, b), model(b, a))
    noise = torch.randn_like(a)
    d = torch.stack([model(a, (a + s * noise).clamp(-1, 1)) for s in (0.05, 0.2, 0.8)])
    assert (d[0] > 0).all()
    assert (d[1] > d[0]).all() and (d[2] > d[1]).all()


def test_lpips_passes_gradients_to_its_inputs_and_checks_shapes(lpips_files: dict) -> None:
    model = LPIPS.from_files("alex", backbone=lpips_files["alex"][0], linear=lpips_files["alex"][1])
    a = images(1, seed=5).requires_grad_(True)
    model(a, images(1, seed=6)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        model(images(2), images(1))
    with pytest.raises(ValueError):
        LPIPS("squeeze")


# ----------------------------------------------------------------------------------------------------------------
# FID


def uint8_images(n: int, seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (n, size // 8, size // 8, 3))
    return np.repeat(np.repeat(small, 8, 1), 8, 2).astype(np.uint8)


def test_inception_loads_the_file_and_gives_pool3_features(inception: FIDInceptionV3, inception_file: tuple) -> None:
    _, state = inception_file
    assert not inception.training
    assert torch.equal(inception.Mixed_7c.branch_pool.bn.running_var, state["Mixed_7c.branch_pool.bn.running_var"])
    assert torch.equal(inception.fc.weight, state["fc.weight"])
    x = uint8_images(3, seed=0)
    f = inception_features(x, inception, batch_size=2, progress=False)
    assert f.shape == (3, 2048) and f.dtype == np.float64
    assert np.isfinite(f).all() and f.std() > 0
    single = inception.features(torch.from_numpy(x[1:2]).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(f[1:2], single.double().numpy(), rtol=1e-4, atol=1e-6)


def test_fid_is_zero_for_a_set_and_itself_and_grows_when_shifted(inception: FIDInceptionV3) -> None:
    a = uint8_images(3, seed=1)
    shifted = np.clip(a.astype(int) + 80, 0, 255).astype(np.uint8)
    same = fid(a, a, inception, batch_size=3, progress=False)
    different = fid(a, shifted, inception, batch_size=3, progress=False)
    assert different > 0
    assert abs(same) < 1e-3 * different


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_with_commuting_covariances_has_a_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # same eigenvectors: commuting, not diagonal
    rotated = frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_in_one_dimension() -> None:
    expected = (1.0 - 4.0) ** 2 + (np.sqrt(2.0) - np.sqrt(9.0)) ** 2
    assert frechet_distance(1.0, 2.0, 4.0, 9.0) == pytest.approx(expected, rel=1e-12)
    x = np.array([[0.0], [2.0], [4.0]])  # mean 2, variance 4
    assert frechet_distance_of_features(x, x * 3) == pytest.approx((2 - 6) ** 2 + (2 - 6) ** 2, rel=1e-9)


def test_frechet_distance_of_features() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 3))
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, (x - x.mean(0)).T @ (x - x.mean(0)) / 199)
    assert abs(frechet_distance_of_features(x, x)) < 1e-8
    shift = np.array([1.0, -2.0, 0.5])
    assert frechet_distance_of_features(x, x + shift) == pytest.approx(shift @ shift, rel=1e-6)
    with pytest.raises(ValueError):
        feature_statistics(x[:1])
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu[:2], sigma[:2, :2])
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))


# ----------------------------------------------------------------------------------------------------------------
# missing and wrong files


def test_missing_backbone_names_the_file_and_where_to_get_it(tmp_path: Path, lpips_files: dict) -> None:
    missing = tmp_path / "nothing.pth"
    with pytest.raises(PerceptualWeightsError) as error:
        LPIPS.from_files("alex", backbone=missing, linear=lpips_files["alex"][1])
    assert isinstance(error.value, ModelLoadError) and isinstance(error.value, InputError)
    message = str(error.value)
    assert str(missing) in message and "no such file" in message
    assert "alexnet-owt-7be5be79.pth" in message
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    with pytest.raises(PerceptualWeightsError, match="not a file"):
        LPIPS.from_files("alex", backbone=tmp_path, linear=lpips_files["alex"][1])


def test_alexnet_file_given_as_vgg(lpips_files: dict) -> None:
    with pytest.raises(PerceptualWeightsError) as error:
        LPIPS.from_files("vgg", backbone=lpips_files["alex"][0], linear=lpips_files["vgg"][1])
    message = str(error.value)
    assert "vgg16-397923af.pth" in message and "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert "missing" in message and "unexpected" in message and "wrongly shaped" in message


def test_wrong_linear_files(tmp_path: Path, lpips_files: dict) -> None:
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with pytest.raises(PerceptualWeightsError) as error:
        LPIPS.from_files("alex", backbone=lpips_files["alex"][0], linear=empty)
    message = str(error.value)
    assert "weights/v0.1/alex.pth" in message and "pip download lpips" in message
    assert "5 missing key(s): lin0.model.1.weight" in message
    wrong = r"4 wrongly shaped key\(s\): lin1.model.1.weight \(1, 128, 1, 1\) instead of \(1, 192, 1, 1\)"
    with pytest.raises(PerceptualWeightsError, match=wrong):
        LPIPS.from_files("alex", backbone=lpips_files["alex"][0], linear=lpips_files["vgg"][1])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PerceptualWeightsError, match="cannot be read"):
        LPIPS.from_files("vgg", backbone=lpips_files["vgg"][0], linear=garbage)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(PerceptualWeightsError, match="not a state dict"):
        LPIPS.from_files("vgg", backbone=lpips_files["vgg"][0], linear=tensor)


def test_incomplete_inception_file(tmp_path: Path) -> None:
    state = dict(FIDInceptionV3().state_dict())
    del state["Mixed_7c.branch_pool.bn.running_var"]
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    with pytest.raises(PerceptualWeightsError) as error:
        FIDInceptionV3.from_file(path)
    message = str(error.value)
    assert "1 missing key(s): Mixed_7c.branch_pool.bn.running_var" in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in message
    with pytest.raises(PerceptualWeightsError, match="no such file"):
        FIDInceptionV3.from_file(tmp_path / "pt_inception-2015-12-05-6726825d.pth")


def test_frechet_distance_matches_scipy_sqrtm() -> None:
    """The eigenvalue route against the textbook formula with scipy's matrix square root."""
    from scipy import linalg

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + 1
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    reference = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)
