"""Reading a rank's slices of a safetensors checkpoint without reading the rest: `safetensors_slices(dir)` maps each
HF tensor name to a lazy slice (safetensors' own for plain tensors; `Fp8Slice` for block-FP8 weights, which reads
the 128 × 128 blocks that cover the rows and columns asked for, with their scales, and dequantizes just those).

>>> import torch
>>> from hyperdecode.model.checkpoint import quantize_fp8, dequantize_fp8
>>> w = torch.randn(300, 200)
>>> q, s = quantize_fp8(w)
>>> torch.equal(Fp8Slice(q, s, (128, 128))[130:250], dequantize_fp8(q, s)[130:250])
True
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from ..errors import ConfigError
from ..model.checkpoint import dequantize_fp8

__all__ = ["safetensors_slices", "Fp8Slice"]


def _span(key: Any, n: int) -> tuple[int, int]:
    if not isinstance(key, slice) or key.step not in (None, 1):
        raise TypeError(f"FP8 weights are sliced by contiguous ranges, not {key!r}")
    start, stop, _ = key.indices(n)
    return start, stop


class Fp8Slice:
    """A block-FP8 weight [out, in] with its scale_inv [ceil(out/bo), ceil(in/bi)], sliced as `w[rows]` or
    `w[rows, cols]` (contiguous ranges): reads the covering blocks only; returns float32."""

    def __init__(self, weight: Any, scale_inv: Any, block: tuple[int, int]):
        self.weight = weight
        self.scale_inv = scale_inv
        self.block = block
        self.shape = tuple(weight.get_shape()) if hasattr(weight, "get_shape") else tuple(weight.shape)

    def __getitem__(self, key: Any) -> Tensor:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        (r0, r1), (c0, c1) = _span(rows, self.shape[0]), _span(cols, self.shape[1])
        bo, bi = self.block
        b0, b1 = r0 // bo, -(-r1 // bo)  # the block rows and columns that cover the range
        k0, k1 = c0 // bi, -(-c1 // bi)
        q = self.weight[b0 * bo:min(b1 * bo, self.shape[0]), k0 * bi:min(k1 * bi, self.shape[1])]
        w = dequantize_fp8(q, self.scale_inv[b0:b1, k0:k1], self.block)
        return w[r0 - b0 * bo:r1 - b0 * bo, c0 - k0 * bi:c1 - k0 * bi]


def safetensors_slices(path: Path, block: tuple[int, int] = (128, 128)) -> Callable[[str], Any]:
    """name (HF, without "model.") -> a lazy slice of it, from whichever file of the checkpoint holds it."""
    from safetensors import safe_open
    index = path / "model.safetensors.index.json"
    files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.exists() \
        else [path / "model.safetensors"]
    where = {}
    for handle in [safe_open(str(f), framework="pt") for f in files]:
        for key in handle.keys():
            where[key.removeprefix("model.")] = (handle, key)

    def raw(name: str) -> Any:
        if name not in where:
            raise ConfigError(f"{path}: tensor '{name}' is missing")
        handle, key = where[name]
        return handle.get_slice(key)

    def get(name: str) -> Any:
        t = raw(name)
        if not t.get_dtype().startswith("F8"):
            return t
        if name + "_scale_inv" not in where:
            raise ConfigError(f"{path}: FP8 tensor '{name}' has no '{name}_scale_inv'")
        return Fp8Slice(t, raw(name + "_scale_inv"), block)
    return get
