"""The value predicates every file, flag and option check uses (mimaface.values)."""

from __future__ import annotations

import numpy as np
import pytest

from mimaface.values import is_finite_number, is_number, is_whole

HUGE = 10**400  # an integer JSON can hold (under Python's 4300 digits) and float cannot


@pytest.mark.parametrize(("value", "number", "whole", "finite"), [
    (3, True, True, True), (np.int64(3), True, True, True), (2.5, True, False, True),
    (np.float32(2.5), True, False, True), (True, False, False, False), (np.bool_(True), False, False, False),
    (float("nan"), True, False, False), (float("inf"), True, False, False), (np.float64(-np.inf), True, False, False),
    (HUGE, True, True, False), ("3", False, False, False), (None, False, False, False), ([1], False, False, False),
])
def test_numbers_wholes_and_finite_numbers(value, number, whole, finite):
    assert (is_number(value), is_whole(value), is_finite_number(value)) == (number, whole, finite)
