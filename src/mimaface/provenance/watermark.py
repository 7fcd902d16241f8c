"""The invisible watermark in every generated frame: a tiled spread-spectrum pattern with a sync
template and informed embedding, read back by voting over frames and a search over scale and shift.

Why our own (``scripts/watermark_robustness.py --compare`` measured the alternatives on the same
videos; README "Provenance"): ``invisible-watermark``'s ``dwtDct``/``dwtDctSvd`` and
``blind-watermark`` hold their bits at fixed block positions, so a 10 % crop leaves chance-level
bits even when the decoder is given the original size; RivaGAN (bundled with invisible-watermark)
survives a crop but not a 0.5x downscale and takes seconds per 512 px frame on a CPU; TrustMark and
VideoSeal download their networks at run time, which cannot happen here.

How it works:

* **Embedding.** A 256 x 256 px tile of 4 x 4 px cells (4096 "chips", each a keyed random sign,
  slightly smoothed) is repeated over the frame from its top-left corner and added to the luma
  (the same value to R, G and B, so chroma subsampling cannot touch it). A quarter of the cells are
  a fixed sync pattern (30 % of the energy); the others carry the 64 bits, about 48 cells each,
  spread over the tile. The amplitude follows the local contrast (0.7x on flat areas to 1.3x in
  texture) and is scaled per frame so that the frame's PSNR is the one asked for
  (``ProvenanceOptions.psnr_db``). *Informed*: the embedder first measures what the reader would
  see of the unmarked picture on every bit and gives each bit the least energy that lifts it to a
  common margin above that (at least 30 % of the margin its own), so the picture itself cannot
  outvote a bit; on a still background, where averaging frames cannot help, this is what makes
  the bits readable.
* **Bits.** 32 fixed *magic* bits, then the payload: a format version (4 bits), the first 20 bits
  of the model's SHA-256 and a CRC-8 of both (:class:`Payload`).
* **Reading.** The frames' luma is averaged (the vote: the mark is the same in every frame, noise
  and motion fade). A crop only shifts a periodic pattern and a rescale changes its period, so for
  each candidate scale (0.25x to 2x, 1 % steps on the centre, then 0.125 % steps on up to 1536 px)
  the average is resampled to the marked size, band-passed and divided by its local
  contrast (whitening), and folded modulo the tile; the sync template's circular correlation
  gives the shift. Each bit is the signed sum of its cells at that alignment.
* **Decision.** The :data:`CANDIDATES` best alignments (by sync) are read and the one whose magic
  bits match best wins. Under "no watermark", the magic bits read at an alignment chosen from the
  sync cells alone are 32 fair coin flips (every bit cell has a keyed random sign), so the count
  that match is Binomial(32, 1/2) at each candidate. The mark counts as found at
  :data:`MAGIC_THRESHOLD` = 28 or more: P(false positive) <= 4 x P(Binomial(32, 1/2) >= 28) =
  3.9e-5 per file (Bonferroni over the candidates), below the 1-in-1000 target with a margin.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

TILE = 256  # pattern period in pixels of the marked frame
CELL = 4  # one chip
GRID = TILE // CELL
SYNC_CELLS = GRID * GRID // 4
MAGIC_BITS = 32
VERSION_BITS = 4
HASH_BITS = 20
CRC_BITS = 8
PAYLOAD_BITS = VERSION_BITS + HASH_BITS + CRC_BITS
NUM_BITS = MAGIC_BITS + PAYLOAD_BITS
FORMAT_VERSION = 1
#: The mark is found when at least this many of the 32 magic bits match (binomial bound above).
MAGIC_THRESHOLD = 28
KEY = b"mimaface-watermark-1"

#: Scales searched when reading: the frame's size against the marked one's (0.25x to 2x).
SCALE_RANGE = (0.25, 2.0)
COARSE_STEP = 0.01  # relative; on a COARSE_WINDOW px centre a 0.5 % error moves cells by 1 px at most
COARSE_WINDOW = 384
FINE_STEP = 0.00125  # around each of the best CANDIDATES coarse scales, on FINE_WINDOW px
FINE_WINDOW = 1536  # the centre read at the fine step (the whole frame up to 1536 px: memory stays bounded)
CANDIDATES = 4  # alignments whose bits are read
CHIP_SIGMA = CELL / 3  # the chip's Gaussian shape (marked-frame pixels)
BAND = (0.7, 2.0)  # the reader's band-pass (Gaussian sigmas, marked-frame pixels)
NORM_FLOOR = 0.5  # grey levels added to the local contrast before dividing by it (flat areas)
MASK = (0.7, 1.3, 8.0)  # the mark's local amplitude: 0.7 + contrast / 8, clipped to [0.7, 1.3]
SYNC_SHARE = 0.3  # of the mark's energy
MIN_SHARE = 0.3  # of the margin, the least each bit carries by its own energy


@dataclass(frozen=True)
class Payload:
    """What the mark carries: the format version and a short hash of the model."""

    version: int
    model_hash: str  # the first 5 hex digits (20 bits) of the model's SHA-256

    def __post_init__(self) -> None:
        if not 0 <= self.version < 1 << VERSION_BITS:
            raise ValueError(f"version must fit in {VERSION_BITS} bits, got {self.version}")
        if len(self.model_hash) != HASH_BITS // 4 or any(c not in "0123456789abcdef" for c in self.model_hash):
            raise ValueError(f"model_hash must be {HASH_BITS // 4} lower-case hex digits, got {self.model_hash!r}")

    def bits(self) -> np.ndarray:
        value = (self.version << HASH_BITS) | int(self.model_hash, 16)
        data = _int_bits(value, VERSION_BITS + HASH_BITS)
        return np.concatenate([data, _int_bits(_crc8(data), CRC_BITS)])

    @classmethod
    def from_bits(cls, bits: np.ndarray) -> Payload | None:
        """The payload, or None when its CRC does not match (bits read wrong)."""
        data, crc = bits[:VERSION_BITS + HASH_BITS], bits[VERSION_BITS + HASH_BITS:]
        if _bits_int(crc) != _crc8(data):
            return None
        value = _bits_int(data)
        return cls(value >> HASH_BITS, f"{value & ((1 << HASH_BITS) - 1):0{HASH_BITS // 4}x}")

    @classmethod
    def for_model(cls, model_sha256: str) -> Payload:
        return cls(FORMAT_VERSION, model_sha256[:HASH_BITS // 4])


@dataclass
class Detection:
    """What :func:`detect` read."""

    found: bool
    magic_matches: int  # of MAGIC_BITS
    p_value: float  # bound on P(at least this many magic bits match | no watermark): false_positive_bound
    payload: Payload | None  # None when not found or its CRC failed
    scale: float  # the frames' size against the marked frames'
    shift: tuple[int, int]  # where the tile's origin is in the folded tile (x, y), marked-frame pixels
    sync: float  # the sync peak, in standard deviations of the correlation map
    frames: int  # frames read
    bits: np.ndarray  # (NUM_BITS,) uint8 as read: the magic bits, then the payload's

    @property
    def bit_accuracy(self) -> float:
        """The fraction of the known (magic) bits read right; 0.5 is chance."""
        return self.magic_matches / MAGIC_BITS


# ------------------------------------------------------------------------------------ embedding


class Watermarker:
    """Marks frames with one payload. Informed embedding: each frame's own projection on every bit
    (what the reader would see of the unmarked picture) is measured and countered, so the picture
    cannot outvote a bit; the energy goes where a bit needs it."""

    def __init__(self, payload: Payload, psnr_db: float) -> None:
        self.payload = payload
        self.rms = 255.0 / 10 ** (psnr_db / 20)  # the delta's RMS for that PSNR (before rounding)
        self._signs = 2.0 * expected_bits(payload) - 1.0
        self._unit: tuple[tuple[int, int], np.ndarray] | None = None

    def mark(self, frame: np.ndarray) -> np.ndarray:
        """The frame (H, W, 3) uint8 with the mark added to its luma."""
        layout = _layout()
        height, width = frame.shape[:2]
        band = _band(_luma(frame))
        contrast = _local_rms(band)
        norm = 1.0 / (contrast + NORM_FLOOR)  # the reader's normaliser
        mask = np.clip(MASK[0] + contrast / MASK[2], MASK[0], MASK[1])  # how much mark each place hides
        # What the reader will see of the picture itself, and of each cell's unit chip, per cell.
        host = layout.chips * _cell_sums(_fold(band * norm, (0, 0)))
        gain = layout.chips * _cell_sums(_fold(self._unit_band(band.shape) * mask * norm, (0, 0)))
        amplitude = self._amplitudes(host, gain, float(np.sqrt(np.mean(mask * mask))))
        cells = layout.chips * amplitude
        cells[layout.data] *= self._signs[layout.cell_bit[layout.data]]
        delta = _tiled(_chip_tile(cells), height, width) * mask
        delta *= self.rms / max(float(np.sqrt(np.mean(delta * delta))), 1e-9)
        # The same delta on R, G and B: luma only. cv2.add rounds and saturates to uint8.
        return cv2.add(np.ascontiguousarray(frame), cv2.merge([delta, delta, delta]), dtype=cv2.CV_8U)

    def _amplitudes(self, host: np.ndarray, gain: np.ndarray, mask_rms: float) -> np.ndarray:
        """Each cell's amplitude: the sync a fixed share of the energy; every bit the least that lifts
        its statistic to a common margin over what the picture contributes (and at least MIN_SHARE
        of the margin on its own), the margin as large as the energy allows."""
        layout = _layout()
        budget = GRID * GRID * (self.rms / (mask_rms * _unit_rms())) ** 2  # sum of squared cell amplitudes
        amplitude = np.zeros(GRID * GRID)
        amplitude[layout.sync] = math.sqrt(SYNC_SHARE * budget / SYNC_CELLS)
        bit_of = layout.cell_bit[layout.data]
        against = np.bincount(bit_of, host[layout.data], NUM_BITS) * self._signs  # > 0: the picture helps
        gain = np.maximum(np.bincount(bit_of, gain[layout.data], NUM_BITS), 1e-9)
        cells = np.bincount(bit_of, minlength=NUM_BITS)

        def alphas(margin: float) -> np.ndarray:
            return np.maximum(margin - against, MIN_SHARE * margin) / gain

        def energy(margin: float) -> float:
            return float(np.sum(cells * alphas(margin) ** 2))

        data_budget = (1 - SYNC_SHARE) * budget
        low, high = 0.0, 1.0
        while energy(high) < data_budget:
            high *= 2
        for _ in range(30):
            mid = (low + high) / 2
            low, high = (mid, high) if energy(mid) < data_budget else (low, mid)
        amplitude[layout.data] = alphas(low)[bit_of]
        return amplitude

    def _unit_band(self, shape: tuple[int, int]) -> np.ndarray:
        """The band-passed pattern of unit chips at this frame size, as the reader sees it (one size cached)."""
        if self._unit is None or self._unit[0] != shape:
            self._unit = shape, _band(_tiled(_chip_tile(_layout().chips), *shape))
        return self._unit[1]


def _tiled(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.tile(tile, (-(-height // TILE), -(-width // TILE)))[:height, :width]


# -------------------------------------------------------------------------------------- reading


def detect(frames: Iterable[np.ndarray]) -> Detection:
    """Read the mark from a still (one frame) or a video's frames, voting over all of them: their
    luma is averaged, so the mark (the same in every frame) adds up while noise and motion fade."""
    total, count = None, 0
    for frame in frames:
        luma = _luma(frame)
        if total is not None and luma.shape != total.shape:
            raise ValueError("all frames must have one size")
        total = luma if total is None else total + luma
        count += 1
    if total is None:
        raise ValueError("no frames")
    return _read(total / count, count)


def _read(luma: np.ndarray, frames: int) -> Detection:
    layout = _layout()
    # Coarse: the centre only; fine: the whole frame around each of the best coarse scales. Each of
    # those CANDIDATES alignments is then read; the one whose magic bits match best is the answer.
    coarse = sorted(((_sync_peak(_fold_scaled(luma, scale, COARSE_WINDOW))[0], scale)
                     for scale in _scales(luma.shape, COARSE_STEP)), reverse=True)[:CANDIDATES]
    reads = []
    for _, centre in coarse:
        peak, shift, scale, folded = max(((*_sync_peak(folded), scale, folded) for scale in
                                          centre * np.exp(np.arange(-4, 5) * math.log1p(FINE_STEP))
                                          for folded in [_fold_scaled(luma, scale, FINE_WINDOW)]), key=lambda c: c[0])
        bits = (_soft_bits(folded, shift) > 0).astype(np.uint8)
        reads.append((int(np.sum(bits[:MAGIC_BITS] == layout.magic)), peak, scale, shift, bits))
    matches, peak, scale, shift, bits = max(reads, key=lambda r: r[:2])
    found = matches >= MAGIC_THRESHOLD
    return Detection(found=found, magic_matches=matches, p_value=false_positive_bound(matches),
                     payload=Payload.from_bits(bits[MAGIC_BITS:]) if found else None, scale=float(scale),
                     shift=shift, sync=peak, frames=frames, bits=bits)


def _scales(shape: tuple[int, int], step: float) -> np.ndarray:
    """Candidate scales, log-spaced, up to the largest that still leaves half a tile to read."""
    low, high = SCALE_RANGE[0], max(SCALE_RANGE[0], min(SCALE_RANGE[1], max(shape) / (TILE / 2)))
    steps = max(1, round(math.log(high / low) / math.log1p(step)))
    return np.exp(np.linspace(math.log(low), math.log(high), steps + 1))


def _fold_scaled(luma: np.ndarray, scale: float, window: int) -> np.ndarray:
    """The luma (its centre, at most ``window`` marked-frame pixels a side) brought to the marked frame's scale,
    whitened as the embedder saw it, and summed modulo the tile."""
    height, width = luma.shape
    h, w = min(height, int(window * scale)), min(width, int(window * scale))
    y0, x0 = (height - h) // 2, (width - w) // 2
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    base = cv2.resize(luma[y0:y0 + h, x0:x0 + w], size, interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
    band = _band(base)
    return _fold(np.clip(band * _normaliser(band), -4.0, 4.0), (round(x0 / scale), round(y0 / scale)))


def _fold(residual: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """Sum a residual at marked-frame scale modulo the tile; ``origin``: where its top-left pixel is."""
    height, width = residual.shape
    ox, oy = origin[0] % TILE, origin[1] % TILE
    padded = np.zeros((-(-(height + oy) // TILE) * TILE, -(-(width + ox) // TILE) * TILE), np.float32)
    padded[oy:oy + height, ox:ox + width] = residual
    return padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE).sum((0, 2))


def _sync_peak(folded: np.ndarray) -> tuple[float, tuple[int, int]]:
    """How strongly (in standard deviations of the correlation map), and at which cyclic shift
    (x, y), the sync template (as the band-pass sees it) is in the folded tile."""
    from scipy import fft

    corr = fft.irfft2(fft.rfft2(folded) * _layout().sync_spectrum, s=folded.shape)  # float32 throughout
    index = int(np.argmax(corr))
    dy, dx = divmod(index, folded.shape[1])
    std = float(corr.std())
    return (float(corr.flat[index] - corr.mean()) / std if std > 0 else 0.0), (dx, dy)


def _soft_bits(folded: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Each bit's evidence: the signed sum of its cells at the alignment ``shift``."""
    layout = _layout()
    cells = layout.chips * _cell_sums(np.roll(folded, (-shift[1], -shift[0]), (0, 1)))
    return np.bincount(layout.cell_bit[layout.data], cells[layout.data], NUM_BITS)


def _cell_sums(folded: np.ndarray) -> np.ndarray:
    """The folded tile summed over each cell (GRID * GRID,): the chip's matched filter, up to its
    slight smoothing."""
    return folded.reshape(GRID, CELL, GRID, CELL).sum((1, 3), dtype=np.float64).ravel()


def _band(luma: np.ndarray) -> np.ndarray:
    """The band the pattern lives in (a difference of Gaussians)."""
    return cv2.GaussianBlur(luma, (0, 0), BAND[0]) - cv2.GaussianBlur(luma, (0, 0), BAND[1])


def _normaliser(band: np.ndarray) -> np.ndarray:
    """1 / local contrast of the band: turns the picture into roughly unit-variance noise."""
    return 1.0 / (_local_rms(band) + NORM_FLOOR)


def _local_rms(band: np.ndarray) -> np.ndarray:
    """The band's RMS over about 8 px around each pixel (computed at a quarter of the resolution)."""
    small = cv2.resize(band * band, (max(1, band.shape[1] // 4), max(1, band.shape[0] // 4)),
                       interpolation=cv2.INTER_AREA)
    energy = cv2.resize(cv2.GaussianBlur(small, (0, 0), 1.0), band.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return np.sqrt(np.maximum(energy, 0.0))


# ------------------------------------------------------------------------------------- the key


@dataclass(frozen=True)
class _Layout:
    sync: np.ndarray  # cell indices of the sync pattern
    data: np.ndarray  # cell indices of the bits
    cell_bit: np.ndarray  # (GRID*GRID,) the bit each data cell carries
    chips: np.ndarray  # (GRID*GRID,) each cell's keyed sign
    magic: np.ndarray  # (MAGIC_BITS,) uint8
    sync_spectrum: np.ndarray  # conj FFT of the sync template (for circular correlation)


@cache
def _layout() -> _Layout:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(KEY).digest()[:8], "little"))
    order = rng.permutation(GRID * GRID)
    sync, data = np.sort(order[:SYNC_CELLS]), np.sort(order[SYNC_CELLS:])
    cell_bit = np.zeros(GRID * GRID, np.int64)
    cell_bit[data] = rng.permutation(data.size) % NUM_BITS
    chips = rng.choice(np.array([-1.0, 1.0]), GRID * GRID)
    magic = rng.integers(0, 2, MAGIC_BITS).astype(np.uint8)
    cells = np.zeros(GRID * GRID)
    cells[sync] = chips[sync]
    pad = 4 * CELL
    template = _band(np.pad(_chip_tile(cells), pad, mode="wrap"))[pad:-pad, pad:-pad]
    return _Layout(sync, data, cell_bit, chips, magic, np.conj(np.fft.rfft2(template)).astype(np.complex64))


def _chip_tile(cells: np.ndarray) -> np.ndarray:
    """The marked-frame tile (TILE, TILE) float32 of these cell amplitudes, each a smooth chip (a
    periodic Gaussian blur: the tile is padded by wrapping)."""
    image = np.kron(cells.reshape(GRID, GRID).astype(np.float32), np.ones((CELL, CELL), np.float32))
    pad = CELL * 2
    blurred = cv2.GaussianBlur(np.pad(image, pad, mode="wrap"), (0, 0), CHIP_SIGMA)
    return np.ascontiguousarray(blurred[pad:-pad, pad:-pad])


@cache
def _unit_rms() -> float:
    """RMS of the tile of unit cells."""
    tile = _chip_tile(_layout().chips)
    return float(np.sqrt(np.mean(tile * tile)))


# ------------------------------------------------------------------------------------- helpers


def expected_bits(payload: Payload) -> np.ndarray:
    """The NUM_BITS bits a frame marked with ``payload`` carries."""
    return np.concatenate([_layout().magic, payload.bits()])


def false_positive_bound(matches: int) -> float:
    """P(a file without the mark reads at least ``matches`` magic bits right): CANDIDATES alignments
    are read, each a Binomial(32, 1/2) draw, so at most CANDIDATES times one tail (Bonferroni)."""
    return min(1.0, CANDIDATES * binomial_tail(matches, MAGIC_BITS))


def binomial_tail(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) >= k)."""
    return sum(math.comb(n, j) for j in range(k, n + 1)) / 2 ** n


def _luma(frame: np.ndarray) -> np.ndarray:
    """Luma (BT.601) of an RGB uint8 frame, float32."""
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _int_bits(value: int, n: int) -> np.ndarray:
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], np.uint8)


def _bits_int(bits: np.ndarray) -> int:
    return int("".join(str(int(b)) for b in bits), 2)


def _crc8(bits: np.ndarray) -> int:
    """CRC-8 (polynomial 0x07) of a bit string."""
    crc = 0
    for bit in bits:
        crc ^= int(bit) << 7
        crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc
