"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class MimafaceError(Exception):
    """Base class of every error that is the input's fault, not the program's."""


class InputError(MimafaceError):
    """A file is missing, unreadable, empty or of an unsupported kind."""


class ModelLoadError(InputError):
    """A model folder is missing, incomplete, of the wrong kind, or does not fit the other parts.

    The message names the folder, what was expected there, and how to provide it.
    """


class FaceNotFoundError(MimafaceError):
    """No face was found where one is needed (an image, or some frames of a video)."""


def one_line(text: object) -> str:
    """The last non-empty line of ``text`` (an error message from a library), stripped."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""
