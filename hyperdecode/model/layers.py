"""Layers every model family shares: RMSNorm, RoPE, projections, the SwiGLU MLP, the static cache and the
`CausalLM` base class that gives every family the same interface (the model protocol).

One weight layout for every family: a projection's weight is stored **[in, out]** (transposed from HF's and
`nn.Linear`'s [out, in]), so a decode step's GEMV is `x @ w`, which CPU BLAS runs 1.5–2× faster than
`x @ w.T` (bench/NOTES.md). Checkpoints are converted once at load (`to_in_out`). The megakernel keeps its own
arena layout ([out, in] tiles) and transposes when it compiles.

The model protocol (what runners, backends and the engine may use; nothing else of a model):

- `cfg`, `device`, `max_batch`, `max_seq`
- `setup_caches(batch, max_seq)`: static caches, kept when already large enough
- `forward(tokens [B, S], pos [B, S], slots=None, use_cache=True) -> hidden [B, S, hidden]`; rows may be
  right-padded with pos = -1 (step.py), so rows of different lengths share one forward
- `logits(hidden) -> float32 logits`
- `cache_tensors() -> {"{layer}.{name}": [rows, max_seq, ...]}`: every cache tensor, position on dim 1
- `keep_cache(row, n)`: keep a row's first n positions (rollback); `copy_cache(src, dst, n)`: prefix reuse
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .step import CacheView

__all__ = ["RMSNorm", "Linear", "MLP", "embedding", "rope", "rope_tables", "LayerCache", "CausalLM", "to_in_out",
           "fuse"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def embedding(vocab: int, hidden: int) -> nn.Embedding:
    """A token embedding table left uninitialised, as every weight here is until the load assigns it (nn.Embedding's
    own random init would import torch's compiler stack: ~1.5 s of every cold start)."""
    return nn.Embedding(vocab, hidden, _weight=torch.empty(vocab, hidden))


class Linear(nn.Module):
    """y = x @ weight (+ bias), weight stored [in, out]."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.empty(d_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x.flatten(0, -2), self.weight).view(*x.shape[:-1], -1)


class MLP(nn.Module):
    """SwiGLU; gate and up share one [hidden, 2 * inter] projection."""

    def __init__(self, hidden: int, inter: int, bias: bool = False):
        super().__init__()
        self.gate_up_proj = Linear(hidden, 2 * inter, bias)
        self.down_proj = Linear(inter, hidden, bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotates pairs (x[2i], x[2i+1]) if interleaved, else (x[i], x[i+d/2]); cos and sin have d/2 columns.
    The output's halves hold the two rotated parts (Llama's rotate-half form when not interleaved)."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    first = torch.addcmul(x1 * cos, x2, sin, value=-1)  # x1 cos - x2 sin, one dispatch fewer (a hot path)
    second = torch.addcmul(x2 * cos, x1, sin)
    return torch.cat((first, second), dim=-1)


def rope_tables(pos: Tensor, inv_freq: Tensor, dtype: torch.dtype, factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos and sin [B, S, d/2] at positions pos [B, S], scaled by `factor` (YaRN's attention factor)."""
    freqs = pos[..., None].float() * inv_freq
    return (freqs.cos() * factor).to(dtype), (freqs.sin() * factor).to(dtype)


class LayerCache(nn.Module):
    """One layer's static cache: named tensors [rows, max_seq, *shape], written at each sequence's positions."""

    def __init__(self, batch: int, max_seq: int, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.names = list(shapes)
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(batch, max_seq, *shape, dtype=dtype, device=device),
                                 persistent=False)

    def tensors(self) -> list[Tensor]:
        return [getattr(self, name) for name in self.names]

    def take(self, old: "LayerCache | None") -> None:
        """Copies a smaller cache's contents into this one's leading rows and positions."""
        if old is None:
            return
        for new, prev in zip(self.tensors(), old.tensors()):
            rows, seq = prev.shape[:2]
            new[:rows, :seq] = prev

    def update(self, pos: Tensor, values: list[Tensor], view: CacheView) -> list[Tensor]:
        """Writes values [B, S, *shape] at positions pos [B, S]; returns each tensor's rows up to `view.length`."""
        batch = pos.shape[0]
        out = []
        for buf, value in zip(self.tensors(), values):
            buf[view.index[:, None], pos] = value
            out.append(view.read(buf, batch))
        return out


class CausalLM(nn.Module):
    """The model protocol's shared part: caches, their row operations, the device. A family subclass builds its
    layers (each with a `self_attn` whose `cache` this class sets), says what each layer caches
    (`cache_shapes`) and implements `forward`, `logits`, `init_buffers` and `from_hf` (its checkpoint shapes are the registry's)."""

    FP32_PARAMS = None  # a regex of parameter names kept in float32 whatever the model's dtype

    def __init__(self) -> None:
        super().__init__()
        self.max_batch = 0
        self.max_seq = 0

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def cache_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        """What one token caches in `layer`: the config says (one source for the model, `inspect` and transfers)."""
        return self.cfg.cache_shapes(layer)

    def setup_caches(self, max_batch: int, max_seq: int) -> None:
        """Allocates static caches; keeps the current ones when already large enough, and their contents when
        they grow (a prefix cache outlives requests)."""
        if max_batch <= self.max_batch and max_seq <= self.max_seq:
            return
        self.max_batch = max(max_batch, self.max_batch)
        self.max_seq = max(max_seq, self.max_seq)
        dtype = self.embed_tokens.weight.dtype
        for i, layer in enumerate(self.layers):
            old = layer.self_attn.cache
            layer.self_attn.cache = LayerCache(self.max_batch, self.max_seq, self.cache_shapes(i), dtype, self.device)
            layer.self_attn.cache.take(old)

    def cache_tensors(self) -> dict[str, Tensor]:
        """Every cache tensor by "{layer}.{name}" (the megakernel's cache names), each [rows, max_seq, ...]."""
        out = {}
        for i, layer in enumerate(self.layers):
            cache = layer.self_attn.cache
            if cache is None:
                continue
            for name, t in zip(cache.names, cache.tensors()):
                out[f"{i}.{name}"] = t
        return out

    def row_caches(self) -> list[Tensor]:
        """Every tensor the row operations below act on: the layers' caches (a family adds its own, e.g. MTP's)."""
        return list(self.cache_tensors().values())

    def keep_cache(self, row: int, n: int, end: int | None = None) -> None:
        """Rollback: row `row` keeps its first n positions; positions n:end (None: all the rest) are cleared as in a
        fresh cache (a verify step passes the end of what it wrote, so only the rejected positions are touched)."""
        for t in self.row_caches():
            t[row, n:end] = 0

    def copy_cache(self, src: int, dst: int, n: int) -> None:
        """Prefix reuse: row `dst` becomes row `src`'s first n positions (the rest of `dst` cleared)."""
        for t in self.row_caches():
            t[dst, :n] = t[src, :n]
            t[dst, n:] = 0


def to_in_out(sd: dict[str, Tensor], keep: tuple[str, ...] = ("embed_tokens.weight",)) -> dict[str, Tensor]:
    """HF tensors with every 2-D weight but the embedding tables transposed to [in, out] (3-D stacks: last two)."""
    out = {}
    for name, t in sd.items():
        if name.endswith(keep) or t.dim() < 2:
            out[name] = t
        else:
            out[name] = t.transpose(-1, -2)
    return out


def fuse(sd: dict[str, Tensor], prefix: str, parts: tuple[str, ...], fused: str) -> None:
    """Joins `prefix + part + ".weight"/".bias"` (already [in, out]) along their outputs into `prefix + fused`."""
    for kind in ("weight", "bias"):
        names = [f"{prefix}{part}.{kind}" for part in parts]
        if names[0] in sd:
            sd[f"{prefix}{fused}.{kind}"] = torch.cat([sd.pop(name) for name in names], dim=-1)
