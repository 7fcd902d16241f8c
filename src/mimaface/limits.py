"""The sizes mimaface accepts from a user's files and arguments, each checked before anything is allocated.

A file or argument beyond a limit is an :class:`~mimaface.errors.InputError` naming the file, the
field and the limit. The limits a user may need to raise read an environment variable
(``MIMAFACE_MAX_FRAMES`` and so on, see :func:`limits`); the others are fixed by what the code can do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from mimaface.errors import InputError


@dataclass(frozen=True)
class Limits:
    """What a user's input may hold. Read the current values with :func:`limits`."""

    frames: int = 90_000  # frames in a motion, a driving video or an output (1 hour at 25 fps)
    image_pixels: int = 50_000_000  # pixels of a still image (a 48 Mpx phone photo fits)
    video_pixels: int = 4096 * 4096  # pixels of one video frame (4K fits)
    output_side: int = 4096  # width or height of a rendered or generated frame
    batch_frames: int = 256  # frames the diffusion model denoises in one pass (batch size x clip length)
    fps: float = 240.0  # frames per second of a motion or a video (must also be > 0)
    motion_json_bytes: int = 64 * 2**20  # size of a MOTION.json file
    motion_json_depth: int = 32  # nesting depth of a MOTION.json file
    motion_columns: int = 1024  # expression or identity columns of a coefficient file (the face model has 36 and 12)
    motion_name_chars: int = 64  # characters of one expression or identity name in a coefficient file

    @staticmethod
    def variable(name: str) -> str:
        """The environment variable that overrides the limit ``name``."""
        return f"MIMAFACE_MAX_{name.upper()}"


OVERRIDABLE = ("frames", "image_pixels", "video_pixels", "output_side")


def limits() -> Limits:
    """The limits in force: the defaults, with ``MIMAFACE_MAX_FRAMES``, ``MIMAFACE_MAX_IMAGE_PIXELS``,
    ``MIMAFACE_MAX_VIDEO_PIXELS`` and ``MIMAFACE_MAX_OUTPUT_SIDE`` (positive integers) taken from the
    environment when set."""
    values = {}
    for item in fields(Limits):
        if item.name not in OVERRIDABLE:
            continue
        variable = Limits.variable(item.name)
        text = os.environ.get(variable)
        if text is None:
            continue
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise InputError(f"{variable} must be a positive integer, got {text!r}")
        values[item.name] = value
    return Limits(**values)


def check_count(value: int, limit: int, what: str, *, where: str, name: str) -> None:
    """Refuse ``value`` (a count of ``what``) above ``limit``, naming the environment variable that raises it."""
    if value > limit:
        hint = f" (set {Limits.variable(name)} to allow more)" if name in OVERRIDABLE else ""
        raise InputError(f"{where}: {value} {what} is more than the limit of {limit}{hint}")
