"""Regression tests for the attack cases of issue 24 (one test per case).

Each case must give a clear error (naming the argument and the value), a correct result, or a
warning that names the cause: never a silent wrong result, a raw traceback, lost output or a
hang.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa_clip._validate import check_index, check_indices


# ------------------------------------------------------------------ index arguments
@pytest.mark.parametrize("value", [np.int64(2), np.int32(2), 2, torch.tensor(2)])
def test_check_index_accepts_numpy_integers(value):
    assert check_index("chain", value, 4) == 2


@pytest.mark.parametrize("value", ["1", 1.0, np.float64(1.0), True, np.bool_(True), None])
def test_check_index_refuses_strings_floats_bools(value):
    with pytest.raises(TypeError, match="`chain` must be an integer index"):
        check_index("chain", value, 4)


def test_check_index_range_named():
    with pytest.raises(ValueError, match=r"`chain` must be an index in \[0, 3\], got 4"):
        check_index("chain", 4, 4)
    assert check_index("record", -1, 4, negative=True) == 3


@pytest.mark.parametrize("value", ["12", [0.7], 2.0, True, 5, [True], np.array([0.5])])
def test_check_indices_refuses_strings_and_floats(value):
    with pytest.raises(TypeError, match="`keep_paths"):
        check_indices("keep_paths", value, 3)


def test_check_indices_accepts_numpy():
    assert check_indices("keep_paths", np.array([0, 2], dtype=np.int64), 3) == [0, 2]
    assert check_indices("keep_paths", [np.int64(1)], 3) == [1]
    with pytest.raises(ValueError, match="distinct"):
        check_indices("keep_paths", [1, 1], 3)
