"""Provenance of generated media: an invisible watermark in every frame (:mod:`.watermark`), a signed
C2PA manifest on every file (:mod:`.manifest`), and ``mimaface verify`` (:mod:`.verify`).

A generation job makes one :class:`Stamp` (:meth:`Stamp.for_job`) and passes every output frame
through :meth:`Stamp.mark` and every output file, still under its temporary name, through
:meth:`Stamp.sign`, so a file appears whole, marked and signed, or not at all.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimaface.provenance.watermark import Payload, Watermarker


@dataclass
class ProvenanceOptions:
    """What generated outputs carry. The defaults are the only place these are written."""

    enabled: bool = True  # False (--no-watermark): no watermark and no manifest; research only
    psnr_db: float = 39.0  # watermark strength: the marked frame's PSNR against the unmarked one
    sign_cert: str | None = None  # PEM chain (signer first); None: the config file, else the local CA
    sign_key: str | None = None  # PEM private key of that certificate


class Stamp:
    """One job's provenance: the watermark with its payload, and the manifest every output gets."""

    def __init__(self, options: ProvenanceOptions, *, engine: str, model_sha256: str, source_sha256: str) -> None:
        from mimaface.provenance.manifest import GenerationRecord, load_signer

        self.payload = Payload.for_model(model_sha256)
        self.record = GenerationRecord(engine=engine, model_sha256=model_sha256, source_sha256=source_sha256,
                                       watermark=self.payload)
        self._watermarker = Watermarker(self.payload, options.psnr_db)
        self._signer = load_signer(options.sign_cert, options.sign_key)
        self.signer = self._signer.origin  # where the signing certificate came from, for the status line

    @classmethod
    def for_job(cls, options: ProvenanceOptions, pipeline, *, engine: str, source: str | os.PathLike | np.ndarray
                ) -> Stamp | None:
        """The stamp of a job with ``pipeline`` (MIMAFacePipeline or MeshWarpPipeline) on ``source``
        (the portrait's file, or its pixels); None when provenance is off. Credentials are checked
        here, before any frame is made."""
        if not options.enabled:
            return None
        source_sha256 = (file_sha256(source) if not isinstance(source, np.ndarray)
                         else hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest())
        return cls(options, engine=engine, model_sha256=model_sha256(pipeline), source_sha256=source_sha256)

    def mark(self, frame: np.ndarray) -> np.ndarray:
        """The frame with the invisible watermark."""
        return self._watermarker.mark(frame)

    def sign(self, path: Path) -> None:
        """Embed a signed manifest in the finished (temporary) file ``path``, in place."""
        from mimaface.provenance.manifest import sign_in_place

        sign_in_place(path, self.record, self._signer)


def model_sha256(pipeline) -> str:
    """SHA-256 of what a pipeline generates with: the diffusion model's and the VAE's weights (names,
    dtypes, shapes and bytes, in name order), or the mesh warp's face model (mean shape, mesh and
    bases). Cached per pipeline object."""
    cached = _MODEL_HASHES.get(pipeline)
    if cached is not None:
        return cached
    from mimaface.warp import MeshWarpPipeline

    digest = hashlib.sha256()
    if isinstance(pipeline, MeshWarpPipeline):
        face = pipeline.face_model
        digest.update(b"mimaface-warp\n")
        for array in (face.mean_shape, face.triangles, face.expression_basis, face.identity_basis):
            digest.update(np.ascontiguousarray(array).tobytes())
    else:
        import torch

        for component in ("model", "vae"):
            for name, tensor in sorted(getattr(pipeline, component).state_dict().items()):
                digest.update(f"{component}.{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    _MODEL_HASHES[pipeline] = digest.hexdigest()
    return digest.hexdigest()


_MODEL_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
