"""Layer split over several GPUs: contiguous runs proportional to free memory, clear refusals."""

from __future__ import annotations

import pytest

from localcoder.cuda.placement import GIB, split_layers
from localcoder.errors import UserError


def test_equal_gpus_take_half_the_layers_each():
    assert split_layers([10] * 8, [100, 100]) == [0] * 4 + [1] * 4


def test_shares_follow_free_memory_and_count_embedding_and_output():
    plan = split_layers([10] * 8, [30, 90], first_bytes=10)
    assert plan == [0] + [1] * 7  # device 0's share: a quarter of 90 bytes, the embedding and one layer
    plan = split_layers([10] * 8, [100, 100], last_bytes=40)
    assert plan.count(0) == 6  # the output on the last GPU pushes layers to the first


def test_one_device_takes_everything():
    assert split_layers([5, 7, 9], [50]) == [0, 0, 0]


def test_too_large_models_are_refused_with_sizes():
    with pytest.raises(UserError, match=r"needs 3\.0 GiB but the GPUs have 2\.0 GiB"):
        split_layers([GIB] * 3, [GIB, GIB])
    with pytest.raises(UserError, match=r"GPU 1 would hold 3\.0 GiB of layers but has 2\.0 GiB free"):
        split_layers([3 * GIB], [2 * GIB, 2 * GIB])  # one layer larger than either GPU


def test_gpu_out_of_memory_while_loading_is_a_clear_error():
    torch = pytest.importorskip("torch")
    from localcoder.cuda.model import out_of_memory_as_user_error

    with pytest.raises(UserError, match=r"the weights do not fit in GPU memory \(.* GiB free now\)"):
        with out_of_memory_as_user_error("the weights"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
