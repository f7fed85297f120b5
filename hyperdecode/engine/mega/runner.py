"""`backend="mega"`: prefill runs on the reference model, every decode step runs in the megakernel over the
compiled program's arenas (one program for all cache slots; rows that are not decoding are computed and ignored)."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...model.deepseek import DeepseekTransformer
from ...model.llama import Transformer
from ..runner import ReferenceRunner
from .kernel import encode, interpreted, run_megakernel
from .program import Program, compile_llama
from .program_mla import compile_deepseek
from .vm import load_cache

__all__ = ["MegaRunner", "compile_model"]


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def unsupported(model: nn.Module) -> str | None:
    """Why the megakernel cannot run `model`, or None."""
    cfg = model.cfg
    if isinstance(model, Transformer):
        if cfg.attention_bias or cfg.mlp_bias:
            return "attention/MLP biases are not compiled"
        return None if _is_pow2(cfg.head_dim) else f"head_dim {cfg.head_dim} is not a power of two"
    if isinstance(model, DeepseekTransformer):
        sizes = {"kv_lora_rank": cfg.kv_lora_rank, "qk_rope_head_dim": cfg.qk_rope_head_dim}
        if cfg.has_indexer:
            sizes["index_head_dim"] = cfg.index_head_dim
        odd = [f"{k}={v}" for k, v in sizes.items() if not _is_pow2(v)]
        return f"{', '.join(odd)} must be powers of two" if odd else None
    return f"{type(model).__name__} is not a model family the compiler knows"


def compile_model(model: nn.Module, batch: int, max_seq: int, tile: int | None = None) -> Program:
    """The decode-step program of either family (wide tiles under the interpreter, 16 output rows on a GPU)."""
    why = unsupported(model)
    if why:
        raise ConfigError(f"backend 'mega' cannot compile this model: {why}; use backend='reference' or 'graph'")
    tile = tile or (256 if interpreted() else 16)
    compile_fn = compile_llama if isinstance(model, Transformer) else compile_deepseek
    return compile_fn(model, batch, max_seq, tile=tile)


class MegaRunner(ReferenceRunner):
    @staticmethod
    def supports(model: nn.Module) -> bool:
        return unsupported(model) is None

    def __init__(self, model: nn.Module, tile: int | None = None, k_block: int | None = None,
                 workers: int | None = None, num_warps: int = 4, prefetch: bool = False):
        """tile: output rows per GEMV instruction; k_block: its k-chunk; workers: persistent programs (default one
        per SM); num_warps: per program; prefetch: L2 prefetch of the next GEMV tile before each wait. The GPU
        benchmark sweeps them."""
        self.tile = tile
        self.launch = dict(k_block=k_block, workers=workers, num_warps=num_warps, prefetch=prefetch)
        why = unsupported(model)
        if why:
            raise ConfigError(f"backend 'mega' cannot run this model: {why}; use backend='reference' or 'graph'")
        super().__init__(model)
        self.device = model.embed_tokens.weight.device
        if self.device.type != "cuda":
            warnings.warn("backend 'mega' without a GPU runs the megakernel in Triton's interpreter with one worker: "
                          "correct but slow, for checking only", stacklevel=3)
        self.prog: Program | None = None

    def setup(self, max_batch: int, max_seq: int) -> None:
        super().setup(max_batch, max_seq)
        if self.prog is None or self.prog.batch < max_batch or self.prog.max_seq <= max_seq:
            # one spare position per row: rows that are not decoding write there, never over a live sequence
            self.prog = compile_model(self.model, max_batch, max_seq + 1, tile=self.tile)
            self.prog.W, self.prog.W32 = self.prog.W.to(self.device), self.prog.W32.to(self.device)
            self.table = encode(self.prog).to(self.device)
            self.A = torch.zeros(self.prog.a_size, device=self.device)
            self.C = torch.zeros(self.prog.c_size, device=self.device)

    def prefill(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> Tensor:
        logits = super().prefill(tokens, pos, slots)
        load_cache(self.prog, self.C, self.model, row=0 if slots is None else int(slots[0]), length=tokens.shape[1])
        return logits

    def decode(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> Tensor:
        B = self.prog.batch
        rows = torch.arange(tokens.shape[0], device=tokens.device) if slots is None else slots
        all_tokens = torch.zeros(B, dtype=torch.long, device=tokens.device)
        all_pos = torch.full((B,), self.prog.max_seq - 1, dtype=torch.long, device=tokens.device)
        all_tokens[rows], all_pos[rows] = tokens[:, 0], pos[:, 0]
        run_megakernel(self.prog, self.A, self.C, all_tokens, all_pos, table=self.table, **self.launch)
        V = self.prog.dims["vocab"]
        return self.A[self.prog.buf["logits"]:self.prog.buf["logits"] + B * V].view(B, V)[rows].clone()
