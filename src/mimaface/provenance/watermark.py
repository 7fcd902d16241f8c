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
  spread over the tile. The amplitude is the same everywhere, scaled per frame so that the frame's
  PSNR is the one asked for (``ProvenanceOptions.psnr_db``). *Informed*: the embedder first
  measures what the reader would see of the unmarked picture on every bit and gives each bit the
  least energy that lifts it to a common margin above that (at least 30 % of the margin its own),
  so the picture itself cannot outvote a bit; on a still background, where averaging frames cannot
  help, this is what makes the bits readable. It measures on the cell grid (the reader's weight is
  smooth, so one value per cell), which keeps a 512 px frame near 3 ms of CPU.
* **Bits.** 32 fixed *magic* bits, then the payload: a format version (4 bits), the first 20 bits
  of the model's SHA-256 and a CRC-8 of both (:class:`Payload`).
* **Reading.** The frames' luma is averaged (the vote: the mark is the same in every frame, noise
  and motion fade). A crop only shifts a periodic pattern and a rescale changes its period, so for
  each candidate scale (0.25x to 2x, 1 % steps on the centre, then 0.125 % steps on up to 1536 px)
  the average is resampled to the marked size, band-passed, weighted by the inverse of its local
  variance (a textured place, where the picture drowns the mark, counts for little; measured
  against dividing by the local RMS, this is what holds the sync and the bits of a 256 px video
  shrunk to 114 px at CRF 28), and folded modulo the tile; the sync template's circular
  correlation gives the shift. Each bit is the signed sum of its cells at that alignment.
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

# Marking is a few small operations per frame that run beside the generator and the encoder; OpenCV's own
# thread pool only contends with them (2 cores, warp engine at 512 px with H.264 and the mark: 24.2 frames/s
# with OpenCV's default threads, 28.9 with one). Process-wide, as OpenCV's setting is.
cv2.setNumThreads(1)

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
#: The reader's band-pass: the difference of two blurs (sigmas in marked-frame pixels), the narrow
#: one the [1, 2, 1] / 4 binomial (variance 1/2 px^2), the wide one a Gaussian taken at half resolution.
BAND = (math.sqrt(0.5), 2.0)
# Of the wide blur's variance (4 px^2) the 2x2 average makes 1/3 and the linear upsampling 2/3; this
# Gaussian (in half-resolution pixels) the rest.
_HALF_SIGMA = math.sqrt(BAND[1] ** 2 - 1.0) / 2
#: The reader weighs the band by 1 / (its local RMS + this many grey levels) ** 2: by the inverse of the
#: local variance, so a textured place, where the picture drowns the mark, counts for little.
WEIGHT_FLOOR = 1.0
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

    def mark(self, frame: np.ndarray) -> np.ndarray:
        """The frame (H, W, 3) uint8 with the mark added to its luma."""
        layout = _layout()
        height, width = frame.shape[:2]
        if height < CELL or width < CELL:
            return frame.copy()  # too small to hold one chip
        band = _band(_luma(frame))[:height // CELL * CELL, :width // CELL * CELL]
        # What the reader will see, per cell, of the picture itself and of each cell's unit chip. The
        # reader's weight is smooth and taken here as one value per cell (on the cell grid: the
        # frame's top-left cell is the tile's), so both are weighted block sums folded modulo the tile.
        weight = _weight(band)
        host = layout.chips * _fold(weight * _cell_sums(band), (0, 0), GRID).ravel()
        gain = layout.unit_gain * _fold(weight, (0, 0), GRID).ravel()
        cells = layout.chips * self._amplitudes(host, gain)
        cells[layout.data] *= self._signs[layout.cell_bit[layout.data]]
        tile = _chip_tile(cells)
        # Scaled to the frame's RMS (each tile pixel counted as often as the frame repeats it), then
        # rounded once on the tile; the same delta on R, G and B: luma only.
        rows, cols = _repeats(height), _repeats(width)
        tile *= self.rms / max(math.sqrt(float(rows @ (tile * tile) @ cols) / (height * width)), 1e-9)
        delta = np.rint(tile).astype(np.int16)
        raise_by = cv2.cvtColor(_tiled(np.clip(delta, 0, 255).astype(np.uint8), height, width), cv2.COLOR_GRAY2RGB)
        lower_by = cv2.cvtColor(_tiled(np.clip(-delta, 0, 255).astype(np.uint8), height, width), cv2.COLOR_GRAY2RGB)
        # A pixel is raised or lowered, never both, so the two saturating steps are one clip.
        marked = cv2.add(np.ascontiguousarray(frame), raise_by)
        return cv2.subtract(marked, lower_by, dst=marked)

    def _amplitudes(self, host: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """Each cell's amplitude: the sync a fixed share of the energy; every bit the least that lifts
        its statistic to a common margin over what the picture contributes (and at least MIN_SHARE
        of the margin on its own), the margin as large as the energy allows."""
        layout = _layout()
        budget = GRID * GRID * (self.rms / layout.unit_rms) ** 2  # sum of squared cell amplitudes
        amplitude = np.zeros(GRID * GRID)
        amplitude[layout.sync] = math.sqrt(SYNC_SHARE * budget / SYNC_CELLS)
        bit_of = layout.cell_bit[layout.data]
        against = np.bincount(bit_of, host[layout.data], NUM_BITS) * self._signs  # > 0: the picture helps
        gain = np.maximum(np.bincount(bit_of, gain[layout.data], NUM_BITS), 1e-9)
        cells = np.bincount(bit_of, minlength=NUM_BITS)
        data_budget = (1 - SYNC_SHARE) * budget

        def alphas(margins: np.ndarray) -> np.ndarray:  # (margins, NUM_BITS)
            return np.maximum(margins[:, None] - against, MIN_SHARE * margins[:, None]) / gain

        # The largest margin whose energy fits the budget (the energy grows with the margin): two rounds
        # of a 48-step grid search (to 1/2304 of the range), from 0 to where the MIN_SHARE floors alone
        # spend it all.
        low, high = 0.0, math.sqrt(data_budget / float(np.sum(cells * (MIN_SHARE / gain) ** 2)))
        for _ in range(2):
            margins = np.linspace(low, high, 49)
            energy = np.sum(cells * alphas(margins) ** 2, axis=1)
            index = min(max(int(np.searchsorted(energy, data_budget)), 1), 48)
            low, high = margins[index - 1], margins[index]
        amplitude[layout.data] = alphas(np.array([low]))[0][bit_of]
        return amplitude


def _repeats(size: int) -> np.ndarray:
    """How often each tile row (or column) occurs in a frame ``size`` pixels high (or wide)."""
    return (size // TILE + (np.arange(TILE) < size % TILE)).astype(np.float32)


def _tiled(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    """The tile repeated over a frame, C-contiguous."""
    return np.ascontiguousarray(np.tile(tile, (-(-height // TILE), -(-width // TILE)))[:height, :width])


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
    # those CANDIDATES alignments (chosen by the sync alone) is then read; the one whose magic bits
    # match best is the answer.
    coarse = sorted(((_sync_peak(_folded(luma, scale, COARSE_WINDOW))[0], scale)
                     for scale in _scales(luma.shape, COARSE_STEP)), reverse=True)[:CANDIDATES]
    reads = []
    for _, centre in coarse:
        peak, shift, scale, folded = max(((*_sync_peak(folded), scale, folded) for scale in
                                          centre * np.exp(np.arange(-4, 5) * math.log1p(FINE_STEP))
                                          for folded in [_folded(luma, scale, FINE_WINDOW)]), key=lambda c: c[0])
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


def _folded(luma: np.ndarray, scale: float, window: int) -> np.ndarray:
    """The luma (its centre, at most ``window`` marked-frame pixels a side) brought to the marked frame's
    scale, band-passed and weighted as the embedder saw it, and summed modulo the tile."""
    height, width = luma.shape
    h, w = min(height, int(window * scale)), min(width, int(window * scale))
    y0, x0 = (height - h) // 2, (width - w) // 2
    size = (max(CELL, round(w / scale)), max(CELL, round(h / scale)))
    base = cv2.resize(luma[y0:y0 + h, x0:x0 + w], size, interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)
    band = _band(base)[:size[1] // CELL * CELL, :size[0] // CELL * CELL]
    weight = cv2.resize(_weight(band), band.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return _fold(band * weight, (round(x0 / scale), round(y0 / scale)), TILE)


def _fold(values: np.ndarray, origin: tuple[int, int], period: int) -> np.ndarray:
    """Sum an array modulo ``period`` (the tile in pixels, or in cells); ``origin``: where its top-left is."""
    height, width = values.shape
    ox, oy = origin[0] % period, origin[1] % period
    padded = np.zeros((-(-(height + oy) // period) * period, -(-(width + ox) // period) * period), np.float32)
    padded[oy:oy + height, ox:ox + width] = values
    return padded.reshape(padded.shape[0] // period, period, padded.shape[1] // period, period).sum((0, 2))


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
    cells = layout.chips * _cell_sums(np.roll(folded, (-shift[1], -shift[0]), (0, 1))).ravel()
    return np.bincount(layout.cell_bit[layout.data], cells[layout.data], NUM_BITS)


def _cell_sums(values: np.ndarray) -> np.ndarray:
    """Each CELL x CELL block summed (the shape a multiple of CELL): the chip's matched filter, up
    to its slight smoothing."""
    height, width = values.shape
    return cv2.resize(values, (width // CELL, height // CELL), interpolation=cv2.INTER_AREA) * (CELL * CELL)


def _band(luma: np.ndarray) -> np.ndarray:
    """The band the pattern lives in (:data:`BAND`; the wide blur at half resolution, where it costs a
    quarter: below its cut-off the half-resolution grid loses nothing)."""
    height, width = luma.shape
    half = cv2.resize(luma, (max(1, width // 2), max(1, height // 2)), interpolation=cv2.INTER_AREA)
    wide = cv2.resize(cv2.GaussianBlur(half, (0, 0), _HALF_SIGMA), (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.subtract(cv2.GaussianBlur(luma, (3, 3), 0), wide, dst=wide)  # (3, 3), 0: OpenCV's [1, 2, 1] / 4


def _weight(band: np.ndarray) -> np.ndarray:
    """The reader's weight of the band, one value per CELL x CELL block (the band's shape a multiple
    of CELL): 1 / (its RMS over about 8 px + WEIGHT_FLOOR) ** 2."""
    energy = cv2.GaussianBlur(_cell_sums(band * band) / (CELL * CELL), (0, 0), 1.0)
    return (np.sqrt(np.maximum(energy, 0.0)) + WEIGHT_FLOOR) ** -2


# ------------------------------------------------------------------------------------- the key


@dataclass(frozen=True)
class _Layout:
    sync: np.ndarray  # cell indices of the sync pattern
    data: np.ndarray  # cell indices of the bits
    cell_bit: np.ndarray  # (GRID*GRID,) the bit each data cell carries
    chips: np.ndarray  # (GRID*GRID,) each cell's keyed sign
    magic: np.ndarray  # (MAGIC_BITS,) uint8
    sync_spectrum: np.ndarray  # conj FFT of the sync template (for circular correlation)
    unit_gain: np.ndarray  # (GRID*GRID,) what the reader sees of each cell's unit chip (weight 1)
    unit_rms: float  # RMS of the tile of unit chips


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
    template = _periodic_band(_chip_tile(cells))
    unit = _chip_tile(chips)
    return _Layout(sync, data, cell_bit, chips, magic, np.conj(np.fft.rfft2(template)).astype(np.complex64),
                   chips * _cell_sums(_periodic_band(unit)).ravel(), float(np.sqrt(np.mean(unit * unit))))


def _periodic_band(tile: np.ndarray) -> np.ndarray:
    """The band of a tile repeated without end (padded by wrapping)."""
    pad = 4 * CELL
    return np.ascontiguousarray(_band(cv2.copyMakeBorder(tile, pad, pad, pad, pad, cv2.BORDER_WRAP))[pad:-pad, pad:-pad])


def _chip_tile(cells: np.ndarray) -> np.ndarray:
    """The marked-frame tile (TILE, TILE) float32 of these cell amplitudes, each chip a CELL x CELL
    block softened by the [1, 2, 1] / 4 binomial (periodically: the tile is padded by wrapping)."""
    image = cv2.resize(cells.reshape(GRID, GRID).astype(np.float32), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
    blurred = cv2.GaussianBlur(cv2.copyMakeBorder(image, 1, 1, 1, 1, cv2.BORDER_WRAP), (3, 3), 0)
    return np.ascontiguousarray(blurred[1:-1, 1:-1])


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
