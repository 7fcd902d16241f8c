"""What a value read from a file or a flag (JSON, YAML, the command line, an API call) must be to
count as a number: every check of the kind uses these. Free of torch and numpy at import time."""

from __future__ import annotations

import math
from numbers import Integral, Real


def is_number(value: object) -> bool:
    """A real number (Python's or numpy's), not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def is_whole(value: object) -> bool:
    """An integer (Python's or numpy's), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """A real number, not a bool, that is finite as a float (an integer beyond float's range is not)."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
