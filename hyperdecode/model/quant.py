"""GGUF weights kept quantized on the CPU: Q4_0, Q4_1 and Q8_0 blocks multiplied as they are stored.

A GGUF tensor of these types is rows of 32-value blocks, each block a fp16 scale d (Q4_1 also a fp16 minimum m)
and its quantized values. `pack` turns a tensor's raw bytes into three arrays (the values, d and c per block, as
`w = d·q + c`), `QuantLinear` multiplies fp32 activations by them with the C kernel of `csrc/qmatmul.c` (built
once with the system's C compiler into the project's cache, then loaded with ctypes), and `quantize_gguf` swaps a
loaded model's projections and LM head for them. The bytes read per token fall from 32 bits per weight to 4.5
(Q4_1) or 8.5 (Q8_0); the activations stay fp32, so the result differs from dequantize-then-matmul only in the
order of the sums.

>>> import gguf, numpy as np
>>> w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
>>> raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
>>> layer = QuantLinear(pack(raw, "Q4_1", 64))
>>> x = torch.randn(2, 64)
>>> exact = x @ torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)).T
>>> bool(torch.allclose(layer(x), exact, atol=1e-4))
True
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["FORMATS", "Packed", "pack", "join_rows", "QuantLinear", "quantize_gguf", "quantize_tensor",
           "quantize_weights", "QUANTIZE_KINDS", "kernel_library", "kernel_isa", "SMALL_M", "ACTIVATIONS",
           "set_activations", "dequantize_model", "restore", "check_activations", "default_activations"]

BLOCK = 32
FORMATS = {"Q4_0": (18, 4), "Q4_1": (20, 4), "Q8_0": (34, 8)}  # bytes per block, bits per value
SMALL_M = 8  # up to this many activation rows the kernel reads the blocks; above, dequantize once and use BLAS
CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("qmatmul.c", "decode_step.c")]  # one library; qmatmul.c includes an ISA's header
ACTIVATIONS = ("fp32", "int8")  # qmatmul.c's ACT_F32, ACT_I8


@dataclass
class Packed:
    """A [N, K] weight as `w = d·q + c` per 32-value block: q packed as stored (two 4-bit values or one int8 a
    byte), d and c fp16 [N, K / 32] as GGUF stores them (c None for Q8_0)."""
    kind: int  # 4 or 8 bits per value
    qs: Tensor  # uint8 [N, K / 2] or [N, K]
    d: Tensor
    c: Tensor | None
    in_features: int

    def rows(self, index: Tensor) -> "Packed":
        """The same weight with its rows reordered (or selected) by `index`."""
        c = None if self.c is None else self.c[index].contiguous()
        return Packed(self.kind, self.qs[index].contiguous(), self.d[index].contiguous(), c, self.in_features)


def pack(raw: np.ndarray, kind: str, in_features: int) -> Packed:
    """A GGUF tensor's raw bytes (uint8 [N, bytes per row]) of type `kind` as `Packed`."""
    if kind not in FORMATS:
        raise ConfigError(f"GGUF type {kind} is not kept quantized here (supported: {', '.join(FORMATS)})")
    size, bits = FORMATS[kind]
    if in_features % BLOCK:
        raise ConfigError(f"a {kind} weight's rows must hold whole 32-value blocks, got {in_features} values")
    rows = raw.reshape(raw.shape[0], in_features // BLOCK, size)
    d = torch.from_numpy(rows[..., :2].copy().view(np.float16)[..., 0].copy())
    if kind == "Q4_1":
        c = torch.from_numpy(rows[..., 2:4].copy().view(np.float16)[..., 0].copy())
    elif kind == "Q4_0":
        c = -8 * d  # exact in fp16: a power of two
    else:
        c = None
    values = rows[..., size - BLOCK * bits // 8:]
    qs = torch.from_numpy(np.ascontiguousarray(values).reshape(raw.shape[0], -1))
    return Packed(bits, qs, d, c, in_features)


class QuantLinear(nn.Module):
    """y = x @ W.T (+ bias) for a packed W [out, in]: the C kernel for a few rows of x, BLAS on W dequantized
    once per call for many (a prompt's prefill)."""

    def __init__(self, packed: Packed, bias: Tensor | None = None):
        super().__init__()
        self.kind = packed.kind
        self.in_features = packed.in_features
        self.out_features = packed.qs.shape[0]
        self.register_buffer("qs", packed.qs)
        self.register_buffer("d", packed.d)
        self.register_buffer("c", packed.c)
        self.bias = bias
        self.activations = "fp32"  # or "int8": how a few rows of x meet the blocks (set_activations)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != torch.float32 or not flat.is_contiguous():
            flat = flat.float().contiguous()
        m, n, k = flat.shape[0], self.out_features, self.in_features
        qs, d = self.qs.data_ptr(), self.d.data_ptr()
        c = None if self.c is None else self.c.data_ptr()  # ctypes passes None as NULL
        lib = kernel_library()
        if m > SMALL_M:
            w = torch.empty(n, k)
            lib.dequantize(self.kind, qs, d, c, w.data_ptr(), n, k, torch.get_num_threads())
            y = flat @ w.T
        else:
            y = torch.empty(m, n)
            scratch = torch.empty(lib.acts_scratch_floats(m, k))  # block sums (and int8 activations) of x
            lib.qmatmul(self.kind, qs, d, c, flat.data_ptr(), scratch.data_ptr(), y.data_ptr(), m, n, k,
                        ACTIVATIONS.index(self.activations), torch.get_num_threads())
        if self.bias is not None:
            y += self.bias
        if x.dim() != 2:
            y = y.view(*x.shape[:-1], n)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.kind}, blocks of {BLOCK}, "
                f"{self.activations} activations")


def kernel_library(march: str | None = None) -> ctypes.CDLL:
    """The compiled kernels (the quantized matmul and engine/native.py's decode step): built once per source,
    compiler, target and CPU into the project's cache (`cc -O3 -march=native -fopenmp`, about a second), then
    loaded. The target picks the vector path (csrc/qmatmul.c): `march` (a -march value: "native", "x86-64-v3"
    for AVX2, "x86-64-v4" for AVX-512, "x86-64-v2" for the plain-C loop), else $HYPERDECODE_ISA, else "native"."""
    return compiled(march or os.environ.get("HYPERDECODE_ISA") or "native")


@lru_cache(maxsize=None)
def compiled(march: str) -> ctypes.CDLL:
    """`kernel_library` for one target, built and loaded once per process."""
    from .embedded import cache_dir
    compiler = os.environ.get("CC", "cc")
    flags = ["-O3", f"-march={march}", "-fopenmp", "-shared", "-fPIC"]
    source = b"".join(path.read_bytes() for path in sorted(CSRC.iterdir()) if path.suffix in (".c", ".h"))
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"the CPU kernels (quantized matmul, native step) need a C compiler ({compiler}: {e}); "
                          "install one (apt-get install gcc), or pass quantize='none' and backend='reference'"
                          ) from None
    key = hashlib.sha256(source + version.encode() + " ".join(flags).encode() + cpu_model().encode()).hexdigest()
    target = cache_dir() / "kernels" / f"cpu-{key[:16]}.so"
    if not target.exists():
        build(compiler, flags, target)
    lib = ctypes.CDLL(str(target))
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    lib.qmatmul.argtypes = [ctypes.c_int, vp, vp, vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.qmatmul.restype = None
    lib.dequantize.argtypes = [ctypes.c_int, vp, vp, vp, vp, i64, i64, ctypes.c_int]
    lib.dequantize.restype = None
    lib.acts_scratch_floats.argtypes = [i64, i64]
    lib.acts_scratch_floats.restype = i64
    lib.quantize_activations.argtypes = [vp, vp, vp, i64, i64]
    lib.quantize_activations.restype = None
    lib.kernel_isa.argtypes = []
    lib.kernel_isa.restype = ctypes.c_char_p
    if lib.kernel_isa() == b"plain-c":
        import platform
        warnings.warn(f"the CPU kernels run their plain-C loop (built with -march={march} on {platform.machine()}, "
                      "no AVX2, AVX-512 or NEON path): quantized decoding is several times slower than it could be",
                      stacklevel=2)
    return lib


def build(compiler: str, flags: list[str], target: Path) -> None:
    """Compiles csrc's sources into the shared library `target` (written whole, then moved into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        r = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(out), "-lm"], capture_output=True,
                           text=True, timeout=300)
        if r.returncode:
            names = ", ".join(path.name for path in SOURCES)
            raise ConfigError(f"building {names} with {compiler} {' '.join(flags)} failed: "
                              f"{r.stderr.strip()[-500:]}")
        os.replace(out, target)


def kernel_isa(march: str | None = None) -> str:
    """The vector path the CPU kernels run here, e.g. "avx2+fma+f16c", "avx512+vnni", "neon+dotprod", "plain-c"."""
    return kernel_library(march).kernel_isa().decode()


def cpu_model() -> str:
    """What -march=native depends on: the CPU's model name and flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(lines[:2])


def quantize_gguf(model: nn.Module, reader: Any, cfg: Any) -> int:
    """Swaps a Llama-family model's projections and (tied or not) LM head for `QuantLinear`s over the GGUF's own
    blocks, where every part of a fused projection is Q4_0, Q4_1 or Q8_0; returns how many were swapped. The
    q and k rows get the reference path's RoPE reordering (weights.unpermute_rope), applied to whole rows."""
    from .weights import unpermute_rope
    tensors = {t.name: t for t in reader.tensors}

    def packed(name: str, heads: int | None = None) -> Packed | None:
        t = tensors.get(name)
        if t is None or t.tensor_type.name not in FORMATS:
            return None
        p = pack(np.asarray(t.data), t.tensor_type.name, int(t.shape[0]))
        if heads is not None:
            p = p.rows(unpermute_rope(torch.arange(p.qs.shape[0])[:, None], heads)[:, 0])
        return p

    swapped = 0
    for i, layer in enumerate(model.layers):
        blk = f"blk.{i}."
        parts = {
            (layer.self_attn, "qkv_proj"): [packed(blk + "attn_q.weight", cfg.num_attention_heads),
                                            packed(blk + "attn_k.weight", cfg.num_key_value_heads),
                                            packed(blk + "attn_v.weight")],
            (layer.self_attn, "o_proj"): [packed(blk + "attn_output.weight")],
            (layer.mlp, "gate_up_proj"): [packed(blk + "ffn_gate.weight"), packed(blk + "ffn_up.weight")],
            (layer.mlp, "down_proj"): [packed(blk + "ffn_down.weight")],
        }
        for (owner, attr), pieces in parts.items():
            if all(p is not None for p in pieces) and len({p.kind for p in pieces}) == 1:
                old = getattr(owner, attr)
                setattr(owner, attr, QuantLinear(join_rows(pieces), old.bias))
                swapped += 1
    head = packed("output.weight") or (packed("token_embd.weight") if cfg.tie_word_embeddings else None)
    if head is not None:
        del model.lm_head
        model.lm_head = QuantLinear(head)
        swapped += 1
    return swapped


QUANTIZE_KINDS = {"int8": "Q8_0", "int4": "Q4_1"}  # --quantize for unquantized checkpoints: GGUF's block forms


def quantize_tensor(w: Tensor, kind: str) -> Packed:
    """A float weight [N, K] quantized into 32-value blocks: "Q8_0" (symmetric int8, d = max|w| / 127) or "Q4_1"
    (asymmetric 4-bit, d = (max - min) / 15, c = min), d and c rounded to fp16 as GGUF stores them, each value to
    the nearest level: every weight is within d / 2 of its original (Q8_0's extremes within d / 2 + 127 d / 2048,
    where d rounded down)."""
    n, k = w.shape
    if k % BLOCK:
        raise ConfigError(f"weight-only quantization needs rows of whole 32-value blocks, got {k} values")
    blocks = w.float().contiguous().reshape(n, k // BLOCK, BLOCK)  # a transposed view must not keep its strides
    if kind == "Q8_0":
        d = (blocks.abs().amax(-1) / 127).half()
        q = torch.round(blocks / d.float().clamp_min(1e-30)[..., None]).clamp(-127, 127).to(torch.int8)
        return Packed(8, q.view(torch.uint8).reshape(n, k), d.contiguous(), None, k)
    low, high = blocks.amin(-1).half(), blocks.amax(-1)
    d = ((high - low.float()) / 15).half()
    steps = (blocks - low.float()[..., None]) / d.float().clamp_min(1e-30)[..., None]
    q = torch.round(steps).clamp(0, 15).to(torch.uint8)
    nibbles = q[..., :16] | (q[..., 16:] << 4)  # byte j: value j low, value j + 16 high (GGUF's layout)
    return Packed(4, nibbles.reshape(n, k // 2).contiguous(), d.contiguous(), low.contiguous(), k)


def quantize_weights(model: nn.Module, quantize: str) -> int:
    """Swaps a Llama-family model's projections and LM head ([in, out] tensors) for `QuantLinear`s of
    `QUANTIZE_KINDS[quantize]`, each whose inputs fill whole 32-value blocks (the others stay as they are);
    returns how many were swapped."""
    kind = QUANTIZE_KINDS[quantize]
    if not hasattr(model, "layers") or not all(hasattr(layer, "mlp") and hasattr(layer.self_attn, "qkv_proj")
                                               for layer in model.layers):
        raise ConfigError(f"quantize '{quantize}' covers the Llama family's projections; "
                          f"{type(model).__name__} has others")
    swapped = 0
    for layer in model.layers:
        for owner, attr in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                            (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj")):
            old = getattr(owner, attr)
            if old.weight.shape[0] % BLOCK == 0:
                setattr(owner, attr, QuantLinear(quantize_tensor(old.weight.detach().T, kind), old.bias))
                swapped += 1
    if model.lm_head.shape[0] % BLOCK == 0:
        head = model.lm_head.detach().T
        del model.lm_head
        model.lm_head = QuantLinear(quantize_tensor(head, kind))
        swapped += 1
    return swapped


def projection_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) of every projection a Llama-family model may hold quantized, the LM head last."""
    slots = [(owner, attr) for layer in getattr(model, "layers", []) if hasattr(layer, "mlp")
             for owner, attr in ((layer.self_attn, "qkv_proj"), (layer.self_attn, "o_proj"),
                                 (layer.mlp, "gate_up_proj"), (layer.mlp, "down_proj"))]
    return slots + [(model, "lm_head")]


def dequantize_model(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replaces every `QuantLinear` of a Llama-family model with its fp32 weights (a `Linear` [in, out], the LM head
    a parameter), as `quantize="none"` would have loaded them; returns what it replaced, for `restore`."""
    from .layers import Linear
    lib = kernel_library()
    replaced = []
    for owner, attr in projection_slots(model):
        old = getattr(owner, attr, None)
        if not isinstance(old, QuantLinear):
            continue
        n, k = old.out_features, old.in_features
        w = torch.empty(n, k)
        lib.dequantize(old.kind, old.qs.data_ptr(), old.d.data_ptr(), None if old.c is None else old.c.data_ptr(),
                       w.data_ptr(), n, k, torch.get_num_threads())
        if attr == "lm_head":
            new = nn.Parameter(w.T.contiguous(), requires_grad=False)
        else:
            new = Linear(k, n, bias=old.bias is not None)
            new.weight = nn.Parameter(w.T.contiguous(), requires_grad=False)
            new.bias = old.bias
        delattr(owner, attr)
        setattr(owner, attr, new)
        replaced.append((owner, attr, old))
    return replaced


def restore(replaced: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Puts back what `dequantize_model` replaced."""
    for owner, attr, old in replaced:
        delattr(owner, attr)
        setattr(owner, attr, old)


def check_activations(activations: str, quantize: str, name: str = "activations") -> None:
    """Fails before a model loads when `activations` is not a known mode or asks for int8 with nothing quantized."""
    if activations not in ("auto", *ACTIVATIONS):
        raise ConfigError(f"{name} '{activations}' is not available (available: auto, {', '.join(ACTIVATIONS)})")
    if activations == "int8" and quantize == "none":
        raise ConfigError(f"{name} 'int8' multiplies quantized weights; quantize 'none' keeps none")


def default_activations(model: nn.Module) -> str:
    """`activations="auto"`: int8 where the kernels run ARM64's NEON path over quantized weights, fp32 elsewhere
    (bench/NOTES.md: on x86 the exact kernels beat llama.cpp; on NEON only the int8 loop matches its instruction
    count per block)."""
    if not any(isinstance(m, QuantLinear) for m in model.modules()):
        return "fp32"
    return "int8" if kernel_isa().startswith("neon") else "fp32"


def set_activations(model: nn.Module, mode: str) -> int:
    """How every `QuantLinear` of `model` meets a few rows of activations: "fp32" (exact: only the order of the sums
    differs from the dequantized weights) or "int8" (each 32-value block of x rounded to int8 with a scale, as
    llama.cpp does, and multiplied in integers: faster where the CPU has integer dot products); returns how many
    it set."""
    if mode not in ACTIVATIONS:
        raise ConfigError(f"activations '{mode}' is not one of {', '.join(ACTIVATIONS)}")
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for layer in layers:
        layer.activations = mode
    return len(layers)


def join_rows(pieces: list[Packed]) -> Packed:
    if len(pieces) == 1:
        return pieces[0]
    c = None if pieces[0].c is None else torch.cat([p.c for p in pieces])
    return Packed(pieces[0].kind, torch.cat([p.qs for p in pieces]), torch.cat([p.d for p in pieces]), c,
                  pieces[0].in_features)
