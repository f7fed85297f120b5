"""The Python VM: runs a `Program` instruction by instruction with plain torch ops — the megakernel's oracle."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .isa import ACCUMULATE, FP32_WEIGHTS, NORM_INPUT, SWIGLU_INPUT, Instr
from .program import Program

__all__ = ["VM", "DependencyError", "load_cache"]


class DependencyError(RuntimeError):
    """An instruction's wait cannot be satisfied (the program is wrong, or a dependency was planted)."""


def load_cache(prog: Program, C: Tensor, model: nn.Module, row: int | None = None, length: int | None = None) -> None:
    """Copies a reference model's cache (after its prefill) into the cache arena `C`: every row, or one `row`'s
    first `length` positions."""
    views = prog.cache_views(C)
    llama = prog.family == "llama"
    pos_dim = 2 if llama else 1  # [batch, kv_heads, seq, dim] or [batch, seq, width]
    rows = slice(None, prog.batch) if row is None else slice(row, row + 1)
    n = prog.max_seq if length is None else length
    for i, layer in enumerate(model.layers):
        cache = layer.self_attn.cache
        sources = (("k", cache.k), ("v", cache.v)) if llama else zip(("lat", "pe", "ik"), cache.tensors)
        for name, src in sources:
            views[f"{i}.{name}"][rows].narrow(pos_dim, 0, n).copy_(src[rows].narrow(pos_dim, 0, n))


class VM:
    """Holds the arenas of one compiled program: activations `A`, cache `C`, and the step inputs."""

    def __init__(self, prog: Program):
        self.prog = prog
        self.W, self.W32 = prog.W.float(), prog.W32
        self.A = torch.zeros(prog.a_size)
        self.C = torch.zeros(prog.c_size)
        self.views = prog.cache_views(self.C)
        self.tokens = torch.zeros(prog.batch, dtype=torch.long)
        self.pos = torch.zeros(prog.batch, dtype=torch.long)

    def rows(self, off: int, width: int) -> Tensor:
        return self.A[off:off + self.prog.batch * width].view(self.prog.batch, width)

    def cached(self, off: int, width: int) -> Tensor:
        """A [batch, max_seq, width] cache tensor of the MLA family at cache offset `off`."""
        return self.C[off:off + self.prog.batch * self.prog.max_seq * width].view(self.prog.batch, -1, width)

    def load_cache(self, model: nn.Module) -> None:
        load_cache(self.prog, self.C, model)

    def step(self, tokens: list[int], pos: list[int], before: Callable[[Instr], None] | None = None) -> Tensor:
        """One decode step: returns logits [batch, vocab]; the greedy next tokens are in `self.next`. `before`, if
        given, is called with each instruction before it runs (to look at the arenas in between)."""
        self.tokens[:] = torch.tensor(tokens)
        self.pos[:] = torch.tensor(pos)
        counters = [0] * self.prog.num_counters
        for i, ins in enumerate(self.prog.instrs):
            for c, target in ins.waits:
                if counters[c] < target:
                    raise DependencyError(f"instruction {i} ({ins.op.name}) waits for counter {c} to reach {target}; "
                                          f"it is {counters[c]} and nothing earlier can raise it")
            if before is not None:
                before(ins)
            getattr(self, ins.op.name.lower())(**ins.args)
            counters[ins.signal] += 1
        d = self.prog.dims
        self.next = self.rows(self.prog.buf["next"], 1)[:, 0].long()
        return self.rows(self.prog.buf["logits"], d["vocab"]).clone()

    def embed(self, w: int, out: int, n: int) -> None:
        table = self.W[w:w + self.prog.dims["vocab"] * n].view(-1, n)
        self.rows(out, n).copy_(table[self.tokens])

    def _rmsnorm(self, v: Tensor, w: int) -> Tensor:
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.prog.eps) * self.W[w:w + v.shape[-1]]

    def gemv(self, x: int, k: int, w: int, out: int, n: int, c0: int, c1: int, flags: int, norm: int) -> None:
        if flags & SWIGLU_INPUT:
            gate_up = self.rows(x, 2 * k)
            v = F.silu(gate_up[:, :k]) * gate_up[:, k:]
        else:
            v = self.rows(x, k)
        if flags & NORM_INPUT:
            v = self._rmsnorm(v, norm)
        weights = self.W32 if flags & FP32_WEIGHTS else self.W
        y = v @ weights[w:w + k * n].view(n, k)[c0:c1].T
        dst = self.rows(out, n)[:, c0:c1]
        dst.add_(y) if flags & ACCUMULATE else dst.copy_(y)

    def attn(self, qkv: int, out: int, row: int, kv_head: int, layer: int) -> None:
        d = self.prog.dims
        hd, nh, nkv = d["head_dim"], d["n_head"], d["n_kv"]
        group = nh // nkv
        heads = self.rows(qkv, d["q_width"])[row].view(nh + 2 * nkv, hd)
        p = int(self.pos[row])
        freqs = p * self.W32[d["inv_freq"]:d["inv_freq"] + hd // 2]
        cos, sin = torch.cat((freqs, freqs)).cos(), torch.cat((freqs, freqs)).sin()
        q = heads[kv_head * group:(kv_head + 1) * group]
        for t in (q, heads[nh + kv_head:nh + kv_head + 1]):  # its query heads and its key, in place
            x1, x2 = t.chunk(2, dim=-1)
            t.copy_(t * cos + torch.cat((-x2, x1), dim=-1) * sin)
        self.views[f"{layer}.k"][row, kv_head, p] = heads[nh + kv_head]
        self.views[f"{layer}.v"][row, kv_head, p] = heads[nh + nkv + kv_head]
        k = self.views[f"{layer}.k"][row, kv_head, :p + 1]
        v = self.views[f"{layer}.v"][row, kv_head, :p + 1]
        attn = torch.softmax(q @ k.T / hd ** 0.5, dim=-1)
        self.rows(out, nh * hd)[row].view(nh, hd)[kv_head * group:(kv_head + 1) * group] = attn @ v

    def argmax(self, x: int, out: int, n: int) -> None:
        self.rows(out, 1)[:, 0] = self.rows(x, n).argmax(-1).float()

    # --- the GLM-5 / DeepSeek family ------------------------------------------------------------------------------

    def norm_slice(self, x: int, x_stride: int, w: int, bias: int, out: int, n: int) -> None:
        v = self.rows(x, x_stride)[:, :n].clone()
        e = self.prog.scales["slice_eps"]
        if bias < 0:
            y = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + e) * self.W[w:w + n]
        else:
            y = F.layer_norm(v, (n,), self.W[w:w + n], self.W[bias:bias + n], e)
        self.rows(out, n).copy_(y)

    def _rope(self, x: Tensor, p: int, interleaved: int) -> Tensor:
        """RoPE (scaled by the YaRN factor); interleaved pairs come out as halves, as in the reference."""
        d = self.prog.dims
        freqs = p * self.W32[d["inv_freq"]:d["inv_freq"] + x.shape[-1] // 2]
        f = self.prog.scales["rope_factor"]
        cos, sin = freqs.cos() * f, freqs.sin() * f
        x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def rope_mla(self, q: int, kva: int, lat: int, row: int, c_lat: int, c_pe: int) -> None:
        d = self.prog.dims
        h, nope, r, L = d["n_head"], d["nope"], d["rope"], d["kv_lora"]
        p = int(self.pos[row])
        qh = self.rows(q, h * (nope + r))[row].view(h, nope + r)
        qh[:, nope:] = self._rope(qh[:, nope:].clone(), p, d["rope_interleave"])
        self.cached(c_lat, L)[row, p] = self.rows(lat, L)[row]
        self.cached(c_pe, r)[row, p] = self._rope(self.rows(kva, L + r)[row, L:].clone(), p, d["rope_interleave"])

    def index_key(self, ik: int, row: int, c_ik: int) -> None:
        d = self.prog.dims
        D, r = d["index_dim"], d["rope"]
        k = self.rows(ik, D)[row].clone()
        k[:r] = self._rope(k[:r].clone(), int(self.pos[row]), d["index_interleave"])
        self.cached(c_ik, D)[row, int(self.pos[row])] = k

    def index_topk(self, iq: int, iw: int, sel: int, row: int, c_ik: int) -> None:
        d = self.prog.dims
        D, r, Hi = d["index_dim"], d["rope"], d["index_heads"]
        p = int(self.pos[row])
        mask = self.rows(sel, self.prog.max_seq)[row]
        mask.zero_()
        k = d["index_topk"]
        if p + 1 <= k:
            mask[:p + 1] = 1.0
            return
        q = self.rows(iq, Hi * D)[row].view(Hi, D)
        q[:, :r] = self._rope(q[:, :r].clone(), p, d["index_interleave"])  # in place, as the kernel
        keys = self.cached(c_ik, D)[row, :p + 1]
        scores = torch.relu(q @ keys.T * D ** -0.5)
        index = (self.rows(iw, Hi)[row] * Hi ** -0.5) @ scores
        mask[torch.sort(index, descending=True, stable=True).indices[:k]] = 1.0

    def mla_attn(self, q: int, att: int, sel: int, row: int, head: int, c_lat: int, c_pe: int, w: int) -> None:
        d = self.prog.dims
        h, nope, r, L, v = d["n_head"], d["nope"], d["rope"], d["kv_lora"], d["v_head"]
        p = int(self.pos[row])
        kv_b = self.W[w:w + h * (nope + v) * L].view(h, nope + v, L)[head]
        qh = self.rows(q, h * (nope + r))[row].view(h, nope + r)[head]
        lat = self.cached(c_lat, L)[row, :p + 1]
        pe = self.cached(c_pe, r)[row, :p + 1]
        scores = ((qh[:nope] @ kv_b[:nope]) @ lat.T + qh[nope:] @ pe.T) * self.prog.scales["softmax"]
        if sel >= 0:
            scores = scores.masked_fill(self.rows(sel, self.prog.max_seq)[row, :p + 1] == 0, float("-inf"))
        o = torch.softmax(scores, dim=-1) @ lat
        self.rows(att, h * v)[row].view(h, v)[head] = kv_b[nope:] @ o

    def route(self, rlog: int, route: int, row: int, bias: int) -> None:
        d = self.prog.dims
        E, k, G = d["experts"], d["top_k"], d["n_group"]
        scores = torch.sigmoid(self.rows(rlog, E)[row])
        choice = scores + self.W32[bias:bias + E]
        if G > 1:
            per = E // G
            group = choice.view(G, per).topk(min(2, per), dim=-1).values.sum(-1)
            keep = torch.zeros(G, dtype=torch.bool)
            keep[group.topk(d["topk_group"]).indices] = True
            choice = choice.masked_fill(~keep.repeat_interleave(per), float("-inf"))
        ids = choice.topk(k).indices
        weights = scores[ids]
        if d["norm_topk"]:
            weights = weights / (weights.sum() + 1e-20)
        out = self.rows(route, 2 * k)[row]
        out[:k], out[k:] = ids.float(), weights * self.prog.scales["routed"]

    def _expert(self, route: int, row: int, slot: int) -> tuple[int, Tensor]:
        k = self.prog.dims["top_k"]
        chosen = self.rows(route, 2 * k)[row]
        return int(chosen[slot]), chosen[k + slot]

    def expert_up(self, x: int, route: int, act: int, row: int, slot: int, w13: int, c0: int, c1: int,
                  norm: int) -> None:
        d = self.prog.dims
        H, I = d["hidden"], d["moe_inter"]
        e, _ = self._expert(route, row, slot)
        gate_up = self.W[w13 + e * 2 * I * H:w13 + (e + 1) * 2 * I * H].view(2, I, H)[:, c0:c1]  # only this expert
        h = self._rmsnorm(self.rows(x, H)[row], norm)
        self.rows(act, d["top_k"] * I)[row].view(-1, I)[slot, c0:c1] = F.silu(gate_up[0] @ h) * (gate_up[1] @ h)

    def expert_down(self, route: int, act: int, x: int, row: int, slot: int, w2: int, c0: int, c1: int) -> None:
        d = self.prog.dims
        H, I = d["hidden"], d["moe_inter"]
        e, weight = self._expert(route, row, slot)
        down = self.W[w2 + e * H * I:w2 + (e + 1) * H * I].view(H, I)[c0:c1]
        self.rows(x, H)[row, c0:c1] += weight * (down @ self.rows(act, d["top_k"] * I)[row].view(-1, I)[slot])
