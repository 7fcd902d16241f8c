"""Identity modulation: photometric augmentations, the ID-token memory bank, and eq. 2's InfoNCE.

Positives of an ID token ``z_i`` (paper, fig. 4):

* its photometrically augmented view (same structure, different pixels);
* every other token of the same identity label, in the batch or in the memory bank (same person,
  different structure: pose, expression, another clip).

Negatives are all tokens of other identities. Eq. 2 is applied to every (anchor, positive) pair
with the anchor's negatives in the denominator, and averaged (the multi-positive form)::

    L = mean_{i, p in P(i)} -log( exp(s_ip / t) / (exp(s_ip / t) + sum_{n in N(i)} exp(s_in / t)) )

with ``s`` the cosine similarity after an optional projection head. Both views are anchors.

The bank stores raw ``e_id`` tokens (detached), projected through the *current* head when used, so
only the encoder's drift makes them stale. Under data parallelism every process gathers the whole
global batch before enqueueing, so all processes keep identical banks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mimaface.models.config import AugmentConfig, IdentityLossConfig

# PIL's ImageFilter kernels, so "edge enhance" and "sharpen" mean what they mean there.
_EDGE_ENHANCE = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 10.0, -1.0], [-1.0, -1.0, -1.0]]) / 2.0
_SHARPEN = torch.tensor([[-2.0, -2.0, -2.0], [-2.0, 32.0, -2.0], [-2.0, -2.0, -2.0]]) / 16.0
_LUMA = (0.299, 0.587, 0.114)


def _random(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None,
            normal: bool = False) -> torch.Tensor:
    """Random numbers on ``like``'s device, drawn from ``generator`` (on its own device) if given."""
    device = generator.device if generator is not None else like.device
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=generator, device=device).to(like.device, like.dtype)


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * _random((n,), like, generator)


def _coin(n: int, p: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(n, 1, 1, 1) boolean mask, True with probability p."""
    return (_uniform(n, 0.0, 1.0, like, generator) < p).view(n, 1, 1, 1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    w = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def _filter(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D filter with edge replication (no dark border)."""
    k = kernel.to(images).expand(images.shape[1], 1, *kernel.shape)
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(images, (pad, pad, pad, pad), mode="replicate"), k, groups=images.shape[1])


class PhotometricAugment(nn.Module):
    """Batched, per-sample random photometric augmentations of RGB images in ``[0, 1]``.

    Each enabled operation is applied to each image independently with its probability; only
    colours change, never geometry. Pass a ``torch.Generator`` for reproducible draws.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        super().__init__()
        self.config = config or AugmentConfig()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        x = images.float().clamp(0, 1)
        n = x.shape[0]

        def u(low: float, high: float) -> torch.Tensor:
            return _uniform(n, low, high, x, generator).view(n, 1, 1, 1)

        def coin(p: float) -> torch.Tensor:
            return _coin(n, p, x, generator)

        if c.color_jitter:
            on = coin(c.color_jitter_p)
            y = x * u(1 - c.brightness, 1 + c.brightness)
            y = _gray(y) + (y - _gray(y)) * u(1 - c.saturation, 1 + c.saturation)
            y = self._hue_rotate(y, u(-c.hue, c.hue) * 2 * math.pi)
            x = torch.where(on, y.clamp(0, 1), x)
        if c.contrast:
            on = coin(c.contrast_p)
            mean = _gray(x).mean(dim=(2, 3), keepdim=True)
            y = mean + (x - mean) * u(1 - c.contrast_strength, 1 + c.contrast_strength)
            x = torch.where(on, y.clamp(0, 1), x)
        filters = [name for name in ("edge_enhance", "blur", "sharpen") if getattr(c, name)]
        if filters:
            on = coin(c.filter_p)
            choice = (_random((n,), x, generator) * len(filters)).long().clamp(max=len(filters) - 1).view(n, 1, 1, 1)
            for index, name in enumerate(filters):
                if name == "blur":
                    y = self._blur(x, float(_uniform(1, *c.blur_sigma, x, generator)))  # one sigma per call
                else:
                    y = _filter(x, _EDGE_ENHANCE if name == "edge_enhance" else _SHARPEN)
                x = torch.where(on & (choice == index), y.clamp(0, 1), x)
        if c.lighting:
            on = coin(c.lighting_p)
            h, w = x.shape[-2:]
            yy = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
            xx = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
            angle = u(0, 2 * math.pi)
            ramp = torch.cos(angle) * xx + torch.sin(angle) * yy  # a light coming from one side
            gain = 1 + c.lighting_strength * u(0, 1) * ramp
            cast = 1 + c.lighting_strength * 0.3 * (2 * _uniform(n * 3, 0, 1, x, generator).view(n, 3, 1, 1) - 1)
            x = torch.where(on, (x * gain * cast).clamp(0, 1), x)
        if c.noise:
            on = coin(c.noise_p)
            y = x + _random(tuple(x.shape), x, generator, normal=True) * u(0, c.noise_std)
            x = torch.where(on, y.clamp(0, 1), x)
        if c.vignette:
            on = coin(c.vignette_p)
            h, w = x.shape[-2:]
            yy = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
            xx = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
            r2 = (xx**2 + yy**2) / 2
            x = torch.where(on, x * (1 - c.vignette_strength * u(0.3, 1) * r2), x)
        if c.grayscale:  # last, so a grayscale view stays gray
            on = coin(c.grayscale_p)
            x = torch.where(on, _gray(x).expand_as(x), x)
        return x.clamp(0, 1).to(images.dtype)

    @staticmethod
    def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Rotate chroma in YIQ space by ``angle`` (N, 1, 1, 1) radians."""
        to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
        cos, sin = torch.cos(angle), torch.sin(angle)  # (N, 1, 1, 1)
        i = yiq[:, 1:2] * cos - yiq[:, 2:3] * sin
        q = yiq[:, 1:2] * sin + yiq[:, 2:3] * cos
        return torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), torch.cat([yiq[:, :1], i, q], 1))

    @staticmethod
    def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
        radius = max(1, math.ceil(2 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        g = g / g.sum()
        return _filter(x, g[:, None] * g[None, :])


def gather_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (dim 0) from every process when ``torch.distributed`` is initialised.

    Handles different batch sizes per process. The result carries no gradient (it is enqueued).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.detach()
    tensor = tensor.detach().contiguous()
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_list = [int(s.item()) for s in sizes]
    longest = max(sizes_list)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded)
    return torch.cat([chunk[:s] for chunk, s in zip(chunks, sizes_list)], dim=0)


class IdentityMemoryBank(nn.Module):
    """A ring buffer of ``size`` (ID token, identity label) pairs; label -1 marks an empty slot.

    The buffers are non-persistent: they are training state, refilled within ``size / batch``
    steps, and kept out of saved model weights.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError("bank size must be >= 0")
        self.size = size
        self.register_buffer("tokens", torch.zeros(size, dim), persistent=False)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long), persistent=False)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def enqueue(self, tokens: torch.Tensor, labels: torch.Tensor, gather: bool = True) -> None:
        """Write tokens (N, dim) and labels (N,) at the pointer, wrapping around; the oldest go first."""
        if self.size == 0:
            return
        if gather:
            tokens, labels = gather_across_processes(tokens), gather_across_processes(labels)
        tokens, labels = tokens.detach()[-self.size:], labels.detach()[-self.size:]
        n = tokens.shape[0]
        index = (self.pointer + torch.arange(n, device=self.tokens.device)) % self.size
        self.tokens[index] = tokens.to(self.tokens)
        self.labels[index] = labels.to(self.labels)
        self.pointer.copy_((self.pointer + n) % self.size)

    def valid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled entries: tokens (M, dim), labels (M,)."""
        keep = self.labels >= 0
        return self.tokens[keep], self.labels[keep]

    def reset(self) -> None:
        self.labels.fill_(-1)
        self.pointer.zero_()


class IdentityContrastiveLoss(nn.Module):
    """Eq. 2 over ID tokens: projection head, memory bank, temperature (see the module docstring)."""

    def __init__(self, config: IdentityLossConfig, dim: int) -> None:
        super().__init__()
        self.config = config
        if config.temperature <= 0:
            raise ValueError("identity loss temperature must be > 0")
        if config.head == "mlp":
            self.head: nn.Module = nn.Sequential(nn.Linear(dim, config.head_hidden_dim), nn.GELU(),
                                                 nn.Linear(config.head_hidden_dim, config.head_dim))
        elif config.head == "linear":
            self.head = nn.Linear(dim, config.head_dim)
        elif config.head == "none":
            self.head = nn.Identity()
        else:
            raise ValueError(f"unknown identity head {config.head!r} (use 'mlp', 'linear' or 'none')")
        self.augment = PhotometricAugment(config.augment)
        self.bank = IdentityMemoryBank(config.bank_size, dim)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ID tokens -> unit vectors in the head's space."""
        head_dtype = next(iter(self.head.parameters()), tokens).dtype
        return F.normalize(self.head(tokens.to(head_dtype)).float(), dim=-1)

    def forward(self, id_tokens: torch.Tensor, augmented_id_tokens: torch.Tensor, labels: torch.Tensor,
                enqueue: bool = True) -> torch.Tensor:
        """InfoNCE of the source tokens (B, C) and their augmented views (B, C), identity labels (B,).

        Uses the bank as it is, then (if ``enqueue``) adds this step's tokens, gathered across processes.
        Returns the unweighted loss (scale it by ``config.weight``).
        """
        if labels is None:
            raise ValueError("the identity loss needs integer identity labels (one per source image)")
        labels = labels.to(id_tokens.device).long().view(-1)
        if id_tokens.shape != augmented_id_tokens.shape or id_tokens.shape[0] != labels.shape[0]:
            raise ValueError(f"id tokens {tuple(id_tokens.shape)}, augmented {tuple(augmented_id_tokens.shape)} "
                             f"and labels {tuple(labels.shape)} disagree")
        if (labels < 0).any():
            raise ValueError("identity labels must be >= 0 (-1 marks empty bank slots)")
        anchors = self.project(torch.cat([id_tokens, augmented_id_tokens]))  # (2B, d)
        anchor_labels = torch.cat([labels, labels])
        bank_tokens, bank_labels = self.bank.valid()
        keys = torch.cat([anchors, self.project(bank_tokens.to(id_tokens))]) if len(bank_labels) else anchors
        key_labels = torch.cat([anchor_labels, bank_labels])
        loss = info_nce(anchors, keys, anchor_labels, key_labels, self.config.temperature)
        if enqueue and self.training:
            self.enqueue(id_tokens, augmented_id_tokens, labels)
        return loss

    @torch.no_grad()
    def enqueue(self, id_tokens: torch.Tensor, augmented_id_tokens: torch.Tensor, labels: torch.Tensor) -> None:
        tokens, token_labels = id_tokens, labels
        if self.config.enqueue_augmented:
            tokens, token_labels = torch.cat([id_tokens, augmented_id_tokens]), torch.cat([labels, labels])
        self.bank.enqueue(tokens, token_labels)


def info_nce(anchors: torch.Tensor, keys: torch.Tensor, anchor_labels: torch.Tensor, key_labels: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Multi-positive eq. 2. ``anchors`` (A, d) are the first A rows of ``keys`` (K, d); unit vectors.

    Each (anchor, positive) pair is scored against the anchor's negatives only, as in eq. 2.
    Anchors without a positive or without a negative contribute nothing.
    """
    a = anchors.shape[0]
    logits = anchors @ keys.t() / temperature  # (A, K)
    same = anchor_labels[:, None] == key_labels[None, :]
    not_self = torch.ones_like(same)
    not_self[:, :a] &= ~torch.eye(a, dtype=torch.bool, device=same.device)
    positive = same & not_self
    negative = ~same
    has_negative = negative.any(dim=1, keepdim=True)
    # log sum_n exp(s_n). Rows without any negative get a finite dummy (0) so no NaN gradient
    # flows back through logsumexp; their pairs are masked out below.
    neg_logits = logits.masked_fill(~negative, float("-inf")).masked_fill(~has_negative, 0.0)
    neg_lse = torch.logsumexp(neg_logits, dim=1, keepdim=True)
    pair_loss = F.softplus(neg_lse - logits)  # -log(e^p / (e^p + sum_n e^n)) = softplus(lse_n - p)
    valid = positive & has_negative
    pair_loss = torch.where(valid, pair_loss, torch.zeros_like(pair_loss))
    count = valid.sum(1)
    per_anchor = pair_loss.sum(1) / count.clamp(min=1)
    used = count > 0
    if not used.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP) happy
    return per_anchor[used].mean()
