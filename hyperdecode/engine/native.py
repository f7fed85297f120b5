"""`backend="native"`: on the CPU, a Llama-family decode step (every row feeds one token, up to 8 rows) runs as one
compiled C function, `model/csrc/decode_step.c`: the embedding, every layer, the final norm and the LM head in one
OpenMP parallel region, with no Python and no dispatch per op. It reads the reference model's own tensors — the
weights (GGUF blocks kept quantized, or fp32) and the KV cache — so prompt chunks, verification steps and larger
batches run on the reference forward and the two share one cache. The C code is built with the quantized matmul
into one library (`model/quant.py: kernel_library`, once per machine, into the project's cache).

>>> import hyperdecode as hd
>>> llm = hd.LLM("tiny-llama", device="cpu", backend="native")
>>> llm.generate("hello", max_tokens=4).token_ids == hd.LLM("tiny-llama", device="cpu").generate(
...     "hello", max_tokens=4).token_ids
True
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..model.quant import ACTIVATIONS, QuantLinear, kernel_library
from ..model.registry import family_of
from .runner import ReferenceRunner

__all__ = ["NativeRunner", "unsupported", "MAX_ROWS"]

MAX_ROWS = 8  # rows one compiled step holds (decode_step.c's MAX_ROWS); larger batches: the reference's BLAS
FP32 = 32  # decode_step.c's kind for an fp32 weight stored [in, out]
i64 = ctypes.c_int64


class Matrix(ctypes.Structure):
    _fields_ = [("kind", i64), ("w", ctypes.c_void_p), ("d", ctypes.c_void_p), ("c", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("n", i64), ("k", i64), ("act", i64)]


class Layer(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p), ("q_norm", ctypes.c_void_p),
                ("k_norm", ctypes.c_void_p), ("qkv", Matrix), ("o", Matrix), ("gate_up", Matrix), ("down", Matrix),
                ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p)]


class Model(ctypes.Structure):
    _fields_ = [("hidden", i64), ("inter", i64), ("n_head", i64), ("n_kv", i64), ("head_dim", i64), ("vocab", i64),
                ("layers", i64), ("max_seq", i64), ("eps", ctypes.c_float), ("embed", ctypes.c_void_p),
                ("inv_freq", ctypes.c_void_p), ("norm", ctypes.c_void_p), ("head", Matrix),
                ("layer", ctypes.POINTER(Layer))]


def unsupported(model: nn.Module) -> str | None:
    """Why the compiled step cannot run `model`, or None."""
    family = family_of(model.cfg)
    if not family.native:
        return f"it compiles the Llama and Qwen3 families' step, not the {family.name} family's"
    if model.device.type != "cpu":
        return f"it runs on the CPU (the model is on '{model.device}')"
    if model.embed_tokens.weight.dtype != torch.float32:
        return f"it computes in float32 (the model is {model.embed_tokens.weight.dtype})"
    return None


def address(t: Tensor | None) -> int | None:
    """A contiguous tensor's data pointer (None for no tensor: NULL in C)."""
    if t is None:
        return None
    if not t.is_contiguous():
        raise ValueError("the native step reads contiguous tensors only")
    return t.data_ptr()


def matrix(layer: nn.Module | Tensor, keep: list) -> Matrix:
    """A projection (QuantLinear, Linear) or a bare [in, out] weight as decode_step.c's `struct matrix`; `keep`
    gets what must outlive the struct (the module itself: its id must not be reused while the struct points into
    it, see NativeRunner._weights)."""
    keep.append(layer)
    if isinstance(layer, QuantLinear):
        return Matrix(layer.kind, address(layer.qs), address(layer.d), address(layer.c), address(layer.bias),
                      layer.out_features, layer.in_features, ACTIVATIONS.index(layer.activations))
    weight = layer if isinstance(layer, Tensor) else layer.weight
    bias = None if isinstance(layer, Tensor) else layer.bias
    weight = weight.detach().contiguous()
    keep.append(weight)  # a contiguous copy must outlive the struct that points at it
    return Matrix(FP32, address(weight), None, None, address(bias), weight.shape[1], weight.shape[0], 0)


class NativeRunner(ReferenceRunner):
    FAST_SHAPES = "[B <= 8, 1]"

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return unsupported(model) is None

    def __init__(self, model: nn.Module):
        why = unsupported(model)
        if why:
            raise ConfigError(f"backend 'native' cannot run this model: {why}; use backend='reference'")
        super().__init__(model)
        self.lib = kernel_library()  # no C compiler: a ConfigError that says so
        self.lib.decode_step.argtypes = [ctypes.POINTER(Model), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                         i64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self.lib.decode_step.restype = ctypes.c_int
        self.struct: Model | None = None
        self.built_for: tuple | None = None  # (caches, weights) the struct was built for
        self.keep: list = []  # what the struct points into (modules, contiguous copies)

    def setup(self, max_batch: int, max_seq: int) -> None:
        super().setup(max_batch, max_seq)
        self._refresh()

    def _caches(self) -> tuple:
        """What identifies the caches: setup_caches reallocates every layer's at once, whoever calls it (e.g. another
        runner on the same model), so their sizes and one tensor's address tell. Cheap: checked every step."""
        cache = self.model.layers[0].self_attn.cache
        return self.model.max_batch, self.model.max_seq, None if cache is None else cache.k.data_ptr()

    def _weights(self) -> tuple:
        """Which projection modules the model holds (a model quantized after the runner was made has others).
        ~0.2 ms on SmolLM2: checked at each setup, not each step."""
        model = self.model
        return id(model.lm_head), *(id(m) for block in model.layers for m in (
            block.self_attn.qkv_proj, block.self_attn.o_proj, block.mlp.gate_up_proj, block.mlp.down_proj))

    def _refresh(self) -> None:
        """Rebuilds the struct when the caches or the projections changed since it was built."""
        state = (self._caches(), self._weights())
        if state != self.built_for:
            self.struct = self._build()
            self.built_for = state

    def _build(self) -> Model:
        """decode_step.c's view of the model: pointers into its tensors (kept alive in `self.keep`)."""
        model, cfg = self.model, self.model.cfg
        self.keep = []
        layers = (Layer * len(model.layers))()
        for slot, block in zip(layers, model.layers):
            attn, mlp = block.self_attn, block.mlp
            slot.input_norm = address(block.input_layernorm.weight)
            slot.post_norm = address(block.post_attention_layernorm.weight)
            slot.q_norm = address(attn.q_norm.weight) if hasattr(attn, "q_norm") else None
            slot.k_norm = address(attn.k_norm.weight) if hasattr(attn, "k_norm") else None
            slot.qkv = matrix(attn.qkv_proj, self.keep)
            slot.o = matrix(attn.o_proj, self.keep)
            slot.gate_up = matrix(mlp.gate_up_proj, self.keep)
            slot.down = matrix(mlp.down_proj, self.keep)
            slot.k_cache = address(attn.cache.k)
            slot.v_cache = address(attn.cache.v)
        self.layers = layers
        return Model(cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                     cfg.head_dim, cfg.vocab_size, cfg.num_hidden_layers, model.max_seq, cfg.rms_norm_eps,
                     address(model.embed_tokens.weight), address(model.inv_freq), address(model.norm.weight),
                     matrix(model.lm_head, self.keep), layers)

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, want: Tensor) -> Tensor:
        B, S = tokens.shape
        if S != 1 or B > MAX_ROWS or bool((pos < 0).any()):
            return self.reference(tokens, pos, slots, want)
        hidden, logits = self.run(tokens[:, 0], pos[:, 0], slots)
        self.hidden = hidden[:, None] if self.keep_hidden else None
        return logits[want[:, 0]]

    @torch.inference_mode()
    def run(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> tuple[Tensor, Tensor]:
        """One compiled step for tokens, pos [B] into cache rows `slots` (None: 0..B-1) -> the final-norm hidden
        states [B, hidden] and float32 logits [B, vocab]."""
        B = tokens.shape[0]
        model = self.model
        if self.built_for is None or self._caches() != self.built_for[0]:
            self._refresh()
        if int(pos.max()) >= model.max_seq or (B if slots is None else int(slots.max()) + 1) > model.max_batch:
            raise ValueError(f"the cache holds {model.max_batch}x{model.max_seq}; call setup first")
        if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, {model.cfg.vocab_size})")
        tokens = tokens.to(torch.int64).contiguous()
        pos = pos.to(torch.int64).contiguous()
        slots = torch.arange(B) if slots is None else slots.to(torch.int64).contiguous()
        hidden = torch.empty(B, model.cfg.hidden_size)
        logits = torch.empty(B, model.cfg.vocab_size)
        status = self.lib.decode_step(ctypes.byref(self.struct), tokens.data_ptr(), pos.data_ptr(), slots.data_ptr(),
                                      B, hidden.data_ptr(), logits.data_ptr(), torch.get_num_threads())
        if status == -2:
            raise ValueError(f"the native step holds 1 to {MAX_ROWS} rows, got {B}")
        if status:
            raise MemoryError("the native decode step could not allocate its scratch memory")
        return hidden, logits
