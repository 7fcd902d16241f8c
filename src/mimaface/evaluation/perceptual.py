"""LPIPS and FID with their standard networks, and a plain Fréchet distance.

LPIPS is Zhang et al. 2018 (the ``lpips`` package, v0.1) on torchvision's AlexNet or VGG16 features; FID is
Heusel et al. 2017 on pytorch-fid's Inception v3. The networks are written here in plain torch with the original
state-dict key names, so the standard weight files load as they are. Weights are read from local paths the caller
gives and are never downloaded; a missing or wrong file raises :class:`PerceptualWeightsError`, which says where to
get the right one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mimaface.errors import ModelLoadError


class PerceptualWeightsError(ModelLoadError):
    """A weight file of LPIPS or FID is missing, unreadable, or not the expected standard file."""


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), N >= 2, in float64."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features of shape (N, D) with N >= 2, got {x.shape}")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric sigma1^(1/2) sigma2 sigma1^(1/2) (the same eigenvalues): exact for covariances, also
    singular ones, and seconds instead of ``scipy.linalg.sqrtm``'s minute for 2048 features.
    Covariances with clearly negative eigenvalues raise ``ValueError``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not fit: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    _psd_sqrt(sigma2)  # checks sigma2 too
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix."""
    sigma = (sigma + sigma.T) / 2
    values, vectors = np.linalg.eigh(sigma)
    if values.min() < -1e-6 * max(1.0, abs(values).max()):
        raise ValueError(f"a covariance has a negative eigenvalue ({values.min():.3g}): not positive semi-definite")
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance_of_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two sets of features (N, D) and (M, D)."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


# ----------------------------------------------------------------------------------------------------------------
# Loading standard weight files


@dataclass(frozen=True)
class _WeightFile:
    what: str  # the standard file expected
    how: str  # how to get it on a machine with network access


_ALEXNET = _WeightFile(
    "torchvision's AlexNet ImageNet weights alexnet-owt-7be5be79.pth",
    "download https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
)
_VGG16 = _WeightFile(
    "torchvision's VGG16 ImageNet weights vgg16-397923af.pth",
    "download https://download.pytorch.org/models/vgg16-397923af.pth",
)
_INCEPTION = _WeightFile(
    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth",
    "download https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth",
)


def _lpips_linear_file(net: str) -> _WeightFile:
    return _WeightFile(
        f"the lpips package's weights/v0.1/{net}.pth",
        f"run `pip download lpips --no-deps` and take lpips/weights/v0.1/{net}.pth out of the wheel (a zip archive)",
    )


def _load_weights(
    module: nn.Module, path: str | Path, expected: _WeightFile, ignore: Callable[[str], bool] = lambda key: False
) -> None:
    """Load ``path`` into ``module`` strictly: every key of the module (BatchNorm's optional
    ``num_batches_tracked`` aside) with its shape, and no other key except those ``ignore`` accepts."""
    path = Path(path)

    def fail(problem: str) -> PerceptualWeightsError:
        return PerceptualWeightsError(
            f"{path}: {problem}. Expected {expected.what}; on a machine with network access, {expected.how}, "
            "and pass the file's local path."
        )

    if not path.exists():
        raise fail("no such file")
    if not path.is_file():
        raise fail("not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise fail(f"cannot be read as a torch weight file ({type(e).__name__})") from e
    if not isinstance(state, dict):
        raise fail(f"holds a {type(state).__name__}, not a state dict")
    own = module.state_dict()
    given = {k: v for k, v in state.items() if not ignore(k)}
    missing = [k for k in own if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in own]
    wrong = [
        f"{k} {tuple(given[k].shape) if isinstance(given[k], Tensor) else type(given[k]).__name__}"
        f" instead of {tuple(v.shape)}"
        for k, v in own.items()
        if k in given and (not isinstance(given[k], Tensor) or given[k].shape != v.shape)
    ]
    problems = [
        f"{len(keys)} {kind} key(s): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong))
        if keys
    ]
    if problems:
        raise fail("does not hold the expected weights (" + "; ".join(problems) + ")")
    module.load_state_dict({**own, **given}, strict=True)


# ----------------------------------------------------------------------------------------------------------------
# LPIPS


class _Features(nn.Module):
    """The ``features`` part of a torchvision classifier, returning the outputs of the layers in ``taps``."""

    def __init__(self, layers: list[nn.Module], taps: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers[: taps[-1] + 1])
        self.taps = taps

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outputs.append(x)
        return outputs


def _alexnet_layers() -> list[nn.Module]:
    """torchvision's ``alexnet().features``."""
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]  # fmt: skip


def _vgg16_layers() -> list[nn.Module]:
    """torchvision's ``vgg16().features`` (configuration "D")."""
    layers: list[nn.Module] = []
    channels = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(v)
    return layers


# net: (layers, indices of the tapped relus, their channels, backbone weight file)
_LPIPS_NETS = {
    "alex": (_alexnet_layers, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), _ALEXNET),
    "vgg": (_vgg16_layers, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), _VGG16),
}


class _NetLinLayer(nn.Module):
    """lpips' NetLinLayer: dropout (idle in eval mode) and a 1x1 convolution to one channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _LinearLayers(nn.Module):
    """``lin0`` ... ``lin4`` of lpips' LPIPS module, as stored in weights/v0.1/{alex,vgg}.pth."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        for i, c in enumerate(channels):
            self.add_module(f"lin{i}", _NetLinLayer(c))


class LPIPS(nn.Module):
    """LPIPS v0.1 distance on AlexNet (``net="alex"``) or VGG16 (``net="vgg"``) features.

    Randomly initialised; use :meth:`from_files` for the standard weights. Call with two batches of images in
    [-1, 1], (N, 3, H, W) each, to get the N distances. The parameters need no gradients; the inputs may.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in _LPIPS_NETS:
            raise ValueError(f"net must be one of {sorted(_LPIPS_NETS)}, got {net!r}")
        layers, taps, channels, _ = _LPIPS_NETS[net]
        self.net = net
        self.backbone = _Features(layers(), taps)
        self.linear = _LinearLayers(channels)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, net: str, backbone: str | Path, linear: str | Path) -> LPIPS:
        """LPIPS with torchvision's ImageNet weights (``backbone``: alexnet-owt-7be5be79.pth or
        vgg16-397923af.pth) and the lpips package's v0.1 linear layers (``linear``: weights/v0.1/alex.pth or
        vgg.pth). Raises :class:`PerceptualWeightsError` when a file is missing or not the expected one."""
        model = cls(net)
        _load_weights(model.backbone, backbone, _LPIPS_NETS[net][3], ignore=lambda key: key.startswith("classifier."))
        _load_weights(model.linear, linear, _lpips_linear_file(net))
        return model

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distances (N,) between images ``a`` and ``b`` in [-1, 1], (N, 3, H, W) each."""
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"need two batches of one shape (N, 3, H, W), got {tuple(a.shape)}, {tuple(b.shape)}")
        n = a.shape[0]
        features = self.backbone((torch.cat([a, b]) - self.shift) / self.scale)
        distance = a.new_zeros(n)
        for f, lin in zip(features, self.linear.children(), strict=True):
            f = f / (f.square().sum(1, keepdim=True).sqrt() + 1e-10)
            distance = distance + lin((f[:n] - f[n:]).square()).mean((1, 2, 3))
        return distance


# ----------------------------------------------------------------------------------------------------------------
# FID


class _BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    """TensorFlow's 3x3 average pool, which leaves the padding out of the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    """pytorch-fid's FIDInceptionA."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = _BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = _BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool(x))], 1)


class _InceptionB(nn.Module):
    """torchvision's InceptionB."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    """pytorch-fid's FIDInceptionC."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):  # fmt: skip
            branch7x7dbl = conv(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool(x))], 1)


class _InceptionD(nn.Module):
    """torchvision's InceptionD."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = _BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    """pytorch-fid's FIDInceptionE_1 (average pool) or, with ``max_pool``, FIDInceptionE_2."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = _BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
            self.branch_pool(pooled),
        ], 1)  # fmt: skip


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``fid_inception_v3()``: the TensorFlow FID Inception v3 in torchvision's Inception3 layout.

    Randomly initialised; use :meth:`from_file` for the standard weights. Returns the 2048-d pool3 features of
    images in [0, 1], (N, 3, H, W), resized to 299x299 as pytorch-fid does. ``fc`` (1008 classes) only holds the
    file's classifier weights, which FID does not use.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> FIDInceptionV3:
        """The network with pytorch-fid's weights pt_inception-2015-12-05-6726825d.pth read from ``path``.
        Raises :class:`PerceptualWeightsError` when the file is missing or not the expected one."""
        model = cls()
        _load_weights(model, path, _INCEPTION)
        return model

    def forward(self, images01: Tensor) -> Tensor:
        """Pool3 features (N, 2048) of images in [0, 1], (N, 3, H, W)."""
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"need images of shape (N, 3, H, W), got {tuple(images01.shape)}")
        x = F.interpolate(images01, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # fmt: skip
            x = block(x)
        return x.mean((2, 3))

    @torch.no_grad()
    def features(self, images01: Tensor) -> Tensor:
        """Pool3 features (N, 2048) of images in [0, 1], (N, 3, H, W), without gradients."""
        return self(images01)


def inception_features(
    images: np.ndarray, model: FIDInceptionV3, batch_size: int = 50, progress: bool = True
) -> np.ndarray:
    """Pool3 features (N, 2048), float64, of uint8 RGB images (N, H, W, 3), computed in batches."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"need uint8 RGB images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="inception", disable=not progress, leave=False):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        batch = batch.permute(0, 3, 1, 2).float() / 255
        out.append(model.features(batch).cpu().double().numpy())
    return np.concatenate(out)


def fid(
    images_a: np.ndarray, images_b: np.ndarray, model: FIDInceptionV3, batch_size: int = 50, progress: bool = True
) -> float:
    """Fréchet Inception Distance between two sets of uint8 RGB images (N, H, W, 3), N >= 2 each."""
    return frechet_distance_of_features(
        inception_features(images_a, model, batch_size, progress),
        inception_features(images_b, model, batch_size, progress),
    )
