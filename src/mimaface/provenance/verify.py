"""``mimaface verify FILE...``: is there a mimaface watermark in the pictures, and what does the
C2PA manifest say? One row per file.

Exit codes (:func:`exit_code`): 0 every file carries mimaface provenance (the watermark is found or
the manifest is valid or trusted) and no manifest is invalid; 1 some file carries none; 3 some
manifest is invalid (the file was changed after it was signed, or the signature is bad); 2 a file
could not be read (as every mimaface error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mimaface.provenance.manifest import ManifestCheck, configured_trust, read_manifest
from mimaface.provenance.watermark import MAGIC_BITS, Detection, detect

OK, NO_PROVENANCE, INVALID = 0, 1, 3


@dataclass
class Verification:
    path: Path
    watermark: Detection
    manifest: ManifestCheck

    @property
    def has_provenance(self) -> bool:
        return self.watermark.found or self.manifest.state in ("valid", "trusted")


def verify_file(path: str | os.PathLike, trust: list[str | os.PathLike] = ()) -> Verification:
    """Read the watermark (voting over a video's frames) and the manifest of one image or video."""
    from mimaface.media import is_video_path, iter_video_frames, load_image

    path = Path(path)
    frames = iter_video_frames(path) if is_video_path(path) else [load_image(path)]
    return Verification(path, detect(frames), read_manifest(path, [*configured_trust(), *trust]))


def exit_code(results: list[Verification]) -> int:
    if any(r.manifest.state == "invalid" for r in results):
        return INVALID
    return OK if all(r.has_provenance for r in results) else NO_PROVENANCE


def table(results: list[Verification]) -> str:
    """The results as a fixed-width table."""
    header = ("FILE", "WATERMARK", "BIT ACCURACY", "P-VALUE", "PAYLOAD", "MANIFEST")
    rows = [header]
    for r in results:
        w = r.watermark
        payload = (f"v{w.payload.version}, model {w.payload.model_hash}" if w.payload is not None
                   else "unreadable" if w.found else "-")
        manifest = r.manifest.state + (f": {r.manifest.reason}" if r.manifest.reason else "")
        rows.append((str(r.path), "found" if w.found else "not found", f"{w.bit_accuracy:.2f} ({w.magic_matches}/{MAGIC_BITS})",
                     f"{w.p_value:.1e}", payload, manifest))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
                     for row in rows)
