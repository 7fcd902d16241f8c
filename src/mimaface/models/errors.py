"""Errors of the network's loading code."""

from mimaface.errors import InputError


class ModelLoadError(InputError):
    """A model folder is missing, incomplete, of the wrong kind, or does not fit the other parts.

    The message names the folder, what was expected there, and how to provide it.
    """
