"""`backend="mega"`: prefill runs on the reference model, every decode step runs in the megakernel over the
compiled program's arenas (one program for all cache slots; rows that are not decoding are computed and ignored)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...model.llama import Transformer
from ..runner import ReferenceRunner
from .kernel import run_megakernel
from .program import compile_llama

__all__ = ["MegaRunner"]


class MegaRunner(ReferenceRunner):
    @staticmethod
    def supports(model: nn.Module) -> bool:
        cfg = model.cfg
        return isinstance(model, Transformer) and not (cfg.attention_bias or cfg.mlp_bias) \
            and cfg.head_dim & (cfg.head_dim - 1) == 0

    def __init__(self, model: nn.Module):
        if not self.supports(model):
            raise ConfigError("backend 'mega' supports Llama-family models without biases and with a power-of-two "
                              "head_dim so far (the GLM-5 family is not compiled yet); use backend='reference'")
        super().__init__(model)
        self.prog = None

    def setup(self, max_batch: int, max_seq: int) -> None:
        super().setup(max_batch, max_seq)
        if self.prog is None or self.prog.batch < max_batch or self.prog.max_seq < max_seq:
            dev = self.model.embed_tokens.weight.device
            self.prog = compile_llama(self.model, max_batch, max_seq)
            self.prog.W = self.prog.W.to(dev)
            self.A = torch.zeros(self.prog.a_size, device=dev)
            self.C = torch.zeros(self.prog.c_size, device=dev)

    def prefill(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> Tensor:
        logits = super().prefill(tokens, pos, slots)
        row = 0 if slots is None else int(slots[0])
        n = tokens.shape[1]
        d, B, T = self.prog.dims, self.prog.batch, self.prog.max_seq
        for i, layer in enumerate(self.model.layers):
            cache = layer.self_attn.cache
            for which, src in ((0, cache.k), (1, cache.v)):
                off = self.prog.kv_offset(i, which)
                arena = self.C[off:off + B * d["n_kv"] * T * d["head_dim"]].view(B, d["n_kv"], T, d["head_dim"])
                arena[row, :, :n] = src[row, :, :n].float()
        return logits

    def decode(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> Tensor:
        B = self.prog.batch
        rows = torch.arange(tokens.shape[0], device=tokens.device) if slots is None else slots
        all_tokens = torch.zeros(B, dtype=torch.long, device=tokens.device)
        all_pos = torch.zeros(B, dtype=torch.long, device=tokens.device)
        all_tokens[rows], all_pos[rows] = tokens[:, 0], pos[:, 0]
        run_megakernel(self.prog, self.A, self.C, all_tokens, all_pos)
        V = self.prog.dims["vocab"]
        return self.A[self.prog.buf["logits"]:self.prog.buf["logits"] + B * V].view(B, V)[rows].clone()
