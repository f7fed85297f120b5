"""The Python VM: runs a `Program` instruction by instruction with plain torch ops — the megakernel's oracle."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .isa import Op
from .program import Program

__all__ = ["VM", "DependencyError"]


class DependencyError(RuntimeError):
    """An instruction's wait cannot be satisfied (the program is wrong, or a dependency was planted)."""


class VM:
    """Holds the arenas of one compiled program: activations `A`, KV cache `C`, and the step inputs."""

    def __init__(self, prog: Program):
        self.prog = prog
        self.A = torch.zeros(prog.a_size)
        self.C = torch.zeros(prog.c_size)
        self.tokens = torch.zeros(prog.batch, dtype=torch.long)
        self.pos = torch.zeros(prog.batch, dtype=torch.long)

    def rows(self, off: int, width: int) -> Tensor:
        return self.A[off:off + self.prog.batch * width].view(self.prog.batch, width)

    def cache(self, layer: int, which: int) -> Tensor:
        d = self.prog.dims
        off = self.prog.kv_offset(layer, which)
        n = self.prog.batch * d["n_kv"] * self.prog.max_seq * d["head_dim"]
        return self.C[off:off + n].view(self.prog.batch, d["n_kv"], self.prog.max_seq, d["head_dim"])

    def load_cache(self, model) -> None:
        """Copies a reference model's KV cache (after its prefill) into the cache arena."""
        for i, layer in enumerate(model.layers):
            c = layer.self_attn.cache
            for which, t in ((0, c.k), (1, c.v)):
                self.cache(i, which).copy_(t[:self.prog.batch, :, :self.prog.max_seq].float())

    def step(self, tokens: list[int], pos: list[int]) -> Tensor:
        """One decode step: returns logits [batch, vocab]; the greedy next tokens are in `self.next`."""
        self.tokens[:] = torch.tensor(tokens)
        self.pos[:] = torch.tensor(pos)
        counters = [0] * self.prog.num_counters
        for i, ins in enumerate(self.prog.instrs):
            for c, target in ins.waits:
                if counters[c] < target:
                    raise DependencyError(f"instruction {i} ({ins.op.name}) waits for counter {c} to reach {target}; "
                                          f"it is {counters[c]} and nothing earlier can raise it")
            getattr(self, ins.op.name.lower())(**ins.args)
            counters[ins.signal] += 1
        d = self.prog.dims
        self.next = self.rows(self.prog.buf["next"], 1)[:, 0].long()
        return self.rows(self.prog.buf["logits"], d["vocab"]).clone()

    def embed(self, w: int, out: int, n: int) -> None:
        table = self.prog.W[w:w + self.prog.dims["vocab"] * n].view(-1, n)
        self.rows(out, n).copy_(table[self.tokens])

    def rmsnorm(self, x: int, w: int, out: int, n: int) -> None:
        v = self.rows(x, n)
        self.rows(out, n).copy_(v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.prog.eps) * self.prog.W[w:w + n])

    def gemv(self, x: int, k: int, w: int, out: int, n: int, c0: int, c1: int, accumulate: int) -> None:
        y = self.rows(x, k) @ self.prog.W[w:w + k * n].view(k, n)[:, c0:c1]
        dst = self.rows(out, n)[:, c0:c1]
        dst.add_(y) if accumulate else dst.copy_(y)

    def rope_append(self, qkv: int, row: int, layer: int) -> None:
        d = self.prog.dims
        hd, nh, nkv = d["head_dim"], d["n_head"], d["n_kv"]
        v = self.rows(qkv, d["q_width"])[row].view(nh + 2 * nkv, hd)
        p = int(self.pos[row])
        freqs = p * self.prog.W[d["inv_freq"]:d["inv_freq"] + hd // 2]
        cos, sin = torch.cat((freqs, freqs)).cos(), torch.cat((freqs, freqs)).sin()
        qk = v[:nh + nkv]
        x1, x2 = qk.chunk(2, dim=-1)
        qk.copy_(qk * cos + torch.cat((-x2, x1), dim=-1) * sin)
        self.cache(layer, 0)[row, :, p] = v[nh:nh + nkv]
        self.cache(layer, 1)[row, :, p] = v[nh + nkv:]

    def attn(self, qkv: int, out: int, row: int, kv_head: int, layer: int) -> None:
        d = self.prog.dims
        hd, nh, nkv = d["head_dim"], d["n_head"], d["n_kv"]
        group = nh // nkv
        q = self.rows(qkv, d["q_width"])[row].view(nh + 2 * nkv, hd)[kv_head * group:(kv_head + 1) * group]
        n = int(self.pos[row]) + 1
        k = self.cache(layer, 0)[row, kv_head, :n]
        v = self.cache(layer, 1)[row, kv_head, :n]
        p = torch.softmax(q @ k.T / hd ** 0.5, dim=-1)
        self.rows(out, nh * hd)[row].view(nh, hd)[kv_head * group:(kv_head + 1) * group] = p @ v

    def swiglu(self, x: int, out: int, n: int) -> None:
        g = self.rows(x, 2 * n)
        self.rows(out, n).copy_(F.silu(g[:, :n]) * g[:, n:])

    def argmax(self, x: int, out: int, n: int) -> None:
        self.rows(out, 1)[:, 0] = self.rows(x, n).argmax(-1).float()
