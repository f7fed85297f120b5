"""A rank's slices of a block-FP8 weight equal the same rows / columns of the whole weight dequantized, at any
offset (inside a 128 x 128 block or across blocks); only contiguous ranges are taken."""
import pytest
import torch

from hyperdecode.model.checkpoint import dequantize_fp8, quantize_fp8
from hyperdecode.parallel.slices import Fp8Slice


@pytest.mark.parametrize("block", [(128, 128), (32, 64)])
def test_fp8_slices_equal_the_dequantized_whole(block):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(300, 200, generator=g) * 0.02
    q, s = quantize_fp8(w, block)
    whole = dequantize_fp8(q, s, block)
    sliced = Fp8Slice(q, s, block)
    for rows in (slice(0, 43), slice(43, 86), slice(129, 300), slice(None)):
        assert torch.equal(sliced[rows], whole[rows])
        for cols in (slice(0, 67), slice(67, 133), slice(190, 200)):
            assert torch.equal(sliced[rows, cols], whole[rows, cols])
    with pytest.raises(TypeError, match="contiguous"):
        sliced[0:10:2]
