"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class MimafaceError(Exception):
    """Base class of every error that is the input's fault, not the program's."""


class InputError(MimafaceError):
    """A file is missing, unreadable, empty or of an unsupported kind."""


class FaceNotFoundError(MimafaceError):
    """No face was found where one is needed (an image, or some frames of a video)."""
