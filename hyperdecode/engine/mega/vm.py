"""The Python VM: runs a `Program` instruction by instruction with plain torch ops — the megakernel's oracle.
`PeerGroup` runs one VM per rank together, for programs that exchange data with PEER_WRITE / PEER_WAIT."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...model.checkpoint import dequantize_fp8
from ...model.layers import rope
from .isa import ACCUMULATE, BEST_EMPTY, FP8_BLOCK, FP8_WEIGHTS, FP32_WEIGHTS, NORM_INPUT, SWIGLU_INPUT, Instr, \
    pack_best, row_stride
from .program import Program

__all__ = ["VM", "PeerGroup", "DependencyError", "copy_cache_rows"]

NUM_FLAGS = 64  # peer flags per rank


class DependencyError(RuntimeError):
    """An instruction's wait cannot be satisfied (the program is wrong, or a dependency was planted)."""


def copy_cache_rows(prog: Program, C: Tensor, model: nn.Module, row: int | None = None, start: int = 0,
                    end: int | None = None, to_arena: bool = True) -> None:
    """Copies positions start:end of one row (or every row) between a reference model's cache and the cache arena
    `C` (both hold the same tensors by name, [batch, max_seq, ...]): into the arena, or back when `to_arena` is
    False."""
    views = prog.cache_views(C)
    rows = slice(None, prog.cache_rows) if row is None else slice(row, row + 1)
    end = prog.max_seq if end is None else end
    for name, ref in model.cache_tensors().items():
        arena = views[name]
        if to_arena:
            arena[rows, start:end] = ref[rows, start:end]
        else:
            ref[rows, start:end] = arena[rows, start:end].to(ref.dtype)


class VM:
    """Holds the arenas of one compiled program: activations `A`, cache `C`, and the step inputs."""

    def __init__(self, prog: Program):
        self.prog = prog
        self.W = prog.W.float()
        self.W32 = prog.W32
        self.W8 = prog.W8.float()
        self.A = torch.zeros(prog.a_size)
        self.C = torch.zeros(prog.c_size)
        self.tokens = torch.zeros(prog.batch, dtype=torch.long)
        self.pos = torch.zeros(prog.batch, dtype=torch.long)
        self.flags = [0] * NUM_FLAGS  # this rank's peer flags (PEER_WRITE adds to them, PEER_WAIT reads them)
        self.peers: list[VM] = [self]  # every rank's VM, by rank (a PeerGroup sets them)
        self.rank = 0

    def rows(self, off: int, width: int) -> Tensor:
        return self.A[off:off + self.prog.batch * width].view(self.prog.batch, width)

    def cached(self, off: int, *shape: int) -> Tensor:
        """A [cache rows, max_seq, *shape] cache tensor at cache-arena offset `off`."""
        size = self.prog.cache_rows * self.prog.max_seq * math.prod(shape)
        return self.C[off:off + size].view(self.prog.cache_rows, self.prog.max_seq, *shape)

    def _crow(self, row: int) -> int:
        """The cache row of activation row `row`."""
        return row // self.prog.queries

    def load_cache(self, model: nn.Module) -> None:
        copy_cache_rows(self.prog, self.C, model)

    def step(self, tokens: list[int], pos: list[int], before: Callable[[Instr], None] | None = None) -> Tensor:
        """One decode step: returns logits [batch, vocab]; the greedy next tokens are in `self.next`. `before`, if
        given, is called with each instruction before it runs (to look at the arenas in between)."""
        for blocked in self.run(tokens, pos, before):
            raise DependencyError(f"instruction {blocked} (PEER_WAIT) waits for a peer's flag; a program that "
                                  "exchanges data with other ranks runs in a PeerGroup")
        return self.prog.logits(self.A).clone()

    def run(self, tokens: list[int], pos: list[int],
            before: Callable[[Instr], None] | None = None) -> Iterator[int]:
        """The step as a generator: it yields the index of a PEER_WAIT whose flag is not reached yet (resume it once
        a peer may have written) and ends when the step is done."""
        self.tokens[:] = torch.tensor(tokens)
        self.pos[:] = torch.tensor(pos)
        counters = [0] * self.prog.num_counters
        for i, ins in enumerate(self.prog.instrs):
            for c, target in ins.waits:
                if counters[c] < target:
                    raise DependencyError(f"instruction {i} ({ins.op.name}) waits for counter {c} to reach {target}; "
                                          f"it is {counters[c]} and nothing earlier can raise it")
            while ins.op.name == "PEER_WAIT" and self.flags[ins.args["flag"]] < ins.args["value"]:
                yield i
            if before is not None:
                before(ins)
            getattr(self, ins.op.name.lower())(**ins.args)
            counters[ins.signal] += 1
        if "logits" in self.prog.buf:  # a whole decode step (not a hand-built exchange)
            self.next = self.prog.next_tokens(self.A)

    def _best(self, best: int) -> Tensor:
        return self.A[best:best + 2 * self.prog.batch].view(torch.int64)

    def embed(self, w: int, out: int, n: int, best: int) -> None:
        table = self.W[w:w + self.prog.dims.vocab * n].view(-1, n)
        self.rows(out, n).copy_(table[self.tokens])
        self._best(best).fill_(BEST_EMPTY)

    def matrix(self, w: int, n: int, k: int, scale: int = -1, fp32: bool = False) -> Tensor:
        """The [n, k] weight matrix stored at w (rows row_stride(k) apart), dequantized when `scale` >= 0."""
        ld = row_stride(k)
        if scale < 0:
            return (self.W32 if fp32 else self.W)[w:w + n * ld].view(n, ld)[:, :k]
        blocks = (-(-n // FP8_BLOCK), -(-ld // FP8_BLOCK))
        scales = self.W32[scale:scale + blocks[0] * blocks[1]].view(blocks)
        return dequantize_fp8(self.W8[w:w + n * ld].view(n, ld), scales, (FP8_BLOCK, FP8_BLOCK))[:, :k]

    def _expert_matrix(self, w: int, e: int, n: int, k: int, scale: int) -> Tensor:
        """Expert e's [n, k] matrix of a stack stored at w (FP8 block scales at `scale` when >= 0)."""
        ld = row_stride(k)
        blocks = -(-n // FP8_BLOCK) * -(-ld // FP8_BLOCK)
        return self.matrix(w + e * n * ld, n, k, scale + e * blocks if scale >= 0 else -1)

    def _rmsnorm(self, v: Tensor, w: int) -> Tensor:
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.prog.eps) * self.W[w:w + v.shape[-1]]

    def gemv(self, x: int, k: int, w: int, out: int, n: int, c0: int, c1: int, flags: int, norm: int,
             scale: int) -> None:
        if flags & SWIGLU_INPUT:
            gate_up = self.rows(x, 2 * k)
            v = F.silu(gate_up[:, :k]) * gate_up[:, k:]
        else:
            v = self.rows(x, k)
        if flags & NORM_INPUT:
            v = self._rmsnorm(v, norm)
        weights = self.matrix(w, n, k, scale if flags & FP8_WEIGHTS else -1, fp32=bool(flags & FP32_WEIGHTS))
        y = v @ weights[c0:c1].T
        dst = self.rows(out, n)[:, c0:c1]
        if flags & ACCUMULATE:
            dst.add_(y)
        else:
            dst.copy_(y)

    def attn(self, qkv: int, out: int, row: int, kv_head: int, c_k: int, c_v: int, q_norm: int, k_norm: int,
             split: int, part: int) -> None:
        """One cache row's tokens in order: each appends its key and value, then attends (causal in the row)."""
        q_per_row = self.prog.queries
        for t in range(q_per_row):
            self._attn_query(qkv, out, row, row * q_per_row + t, kv_head, c_k, c_v, q_norm, k_norm, split, part)

    def _attn_query(self, qkv: int, out: int, crow: int, row: int, kv_head: int, c_k: int, c_v: int, q_norm: int,
                    k_norm: int, split: int, part: int) -> None:
        d = self.prog.dims
        hd, nh, nkv = d.head_dim, d.n_head, d.n_kv
        group = nh // nkv
        heads = self.rows(qkv, (nh + 2 * nkv) * hd)[row].view(nh + 2 * nkv, hd)
        p = int(self.pos[row])
        freqs = p * self.W32[d.inv_freq:d.inv_freq + hd // 2]
        q = heads[kv_head * group:(kv_head + 1) * group].clone()  # A[qkv] is left as it is: every split reads it
        k_new = heads[nh + kv_head:nh + kv_head + 1].clone()
        if q_norm >= 0:
            q = self._rmsnorm(q, q_norm)
        if k_norm >= 0:
            k_new = self._rmsnorm(k_new, k_norm)
        q = rope(q, freqs.cos(), freqs.sin())
        k_new = rope(k_new, freqs.cos(), freqs.sin())
        keys = self.cached(c_k, nkv, hd)
        values = self.cached(c_v, nkv, hd)
        lo, hi = split * d.kv_split, min((split + 1) * d.kv_split, p + 1)
        if lo <= p < hi:  # the split that holds the new position appends it
            keys[crow, p, kv_head] = k_new[0]
            values[crow, p, kv_head] = heads[nh + nkv + kv_head]
        heads_out = slice(kv_head * group, (kv_head + 1) * group)
        if part < 0:
            attn = torch.softmax(q @ keys[crow, :p + 1, kv_head].T / hd ** 0.5, dim=-1)
            self.rows(out, nh * hd)[row].view(nh, hd)[heads_out] = attn @ values[crow, :p + 1, kv_head]
            return
        partial = self.rows(part, d.splits * nh * (hd + 2))[row].view(d.splits, nh, hd + 2)[split, heads_out]
        if hi <= lo:  # nothing of this row's context is in this split
            partial[:, :hd], partial[:, hd], partial[:, hd + 1] = 0.0, float("-inf"), 0.0
            return
        scores = q @ keys[crow, lo:hi, kv_head].T / hd ** 0.5
        m = scores.max(-1).values
        e = torch.exp(scores - m[:, None])
        partial[:, :hd] = e @ values[crow, lo:hi, kv_head]
        partial[:, hd] = m
        partial[:, hd + 1] = e.sum(-1)

    def attn_merge(self, part: int, out: int, row: int) -> None:
        d = self.prog.dims
        hd, nh = d.head_dim, d.n_head
        partial = self.rows(part, d.splits * nh * (hd + 2))[row].view(d.splits, nh, hd + 2)
        m = partial[:, :, hd]
        weight = torch.exp(m - m.max(0).values)  # [splits, heads]; empty splits weigh 0
        total = (weight * partial[:, :, hd + 1]).sum(0)
        self.rows(out, nh * hd)[row].view(nh, hd)[:] = (weight[:, :, None] * partial[:, :, :hd]).sum(0) / total[:, None]

    def argmax(self, x: int, best: int, n: int, row: int, c0: int, c1: int) -> None:
        piece = self.rows(x, n)[row, c0:c1]
        index = c0 + int(piece.argmax())  # the first of equals
        top = piece[index - c0]
        bits = 0 if top == 0 else int(top.view(torch.int32))  # -0.0 counts as 0.0, as in the kernel
        key = bits if bits >= 0 else bits ^ 0x7FFFFFFF  # an int32 that orders like the float
        packed = self._best(best)
        packed[row] = max(int(packed[row]), pack_best(key, index))

    # --- multi-GPU ------------------------------------------------------------------------------------------------

    def peer_write(self, src: int, dst: int, n: int, peer: int, flag: int) -> None:
        target = self.peers[peer]
        target.A[dst:dst + n] = self.A[src:src + n]
        target.flags[flag] += 1

    def peer_wait(self, flag: int, value: int) -> None:
        """Nothing left to do: `run` only gets here once the flag has reached the value."""

    def reduce(self, src: int, dst: int, n: int, slots: int) -> None:
        self.A[dst:dst + n] += self.A[src:src + slots * n].view(slots, n).sum(0)

    # --- the GLM-5 / DeepSeek family ------------------------------------------------------------------------------

    def norm_slice(self, x: int, x_stride: int, w: int, bias: int, out: int, n: int) -> None:
        v = self.rows(x, x_stride)[:, :n].clone()
        eps = self.prog.scales["slice_eps"]
        if bias < 0:
            y = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * self.W[w:w + n]
        else:
            y = F.layer_norm(v, (n,), self.W[w:w + n], self.W[bias:bias + n], eps)
        self.rows(out, n).copy_(y)

    def _rope(self, x: Tensor, p: int, interleaved: bool) -> Tensor:
        """RoPE (scaled by the YaRN factor); interleaved pairs come out as halves, as in the reference."""
        d = self.prog.dims
        freqs = p * self.W32[d.inv_freq:d.inv_freq + x.shape[-1] // 2]
        factor = self.prog.scales["rope_factor"]
        return rope(x, freqs.cos() * factor, freqs.sin() * factor, interleaved)

    def rope_mla(self, q: int, kva: int, lat: int, row: int, c_lat: int, c_pe: int) -> None:
        d = self.prog.dims
        h, nope, r, lora = d.n_head, d.nope, d.rope, d.kv_lora
        p = int(self.pos[row])
        qh = self.rows(q, h * (nope + r))[row].view(h, nope + r)
        qh[:, nope:] = self._rope(qh[:, nope:].clone(), p, d.rope_interleave)
        self.cached(c_lat, lora)[self._crow(row), p] = self.rows(lat, lora)[row]
        k_pe = self.rows(kva, lora + r)[row, lora:].clone()
        self.cached(c_pe, r)[self._crow(row), p] = self._rope(k_pe, p, d.rope_interleave)

    def index_key(self, ik: int, row: int, c_ik: int) -> None:
        d = self.prog.dims
        p = int(self.pos[row])
        k = self.rows(ik, d.index_dim)[row].clone()
        k[:d.rope] = self._rope(k[:d.rope].clone(), p, d.index_interleave)
        self.cached(c_ik, d.index_dim)[self._crow(row), p] = k

    def index_topk(self, iq: int, iw: int, sel: int, row: int, c_ik: int) -> None:
        d = self.prog.dims
        D, r, Hi = d.index_dim, d.rope, d.index_heads
        p = int(self.pos[row])
        mask = self.rows(sel, self.prog.max_seq)[row]
        mask.zero_()
        k = d.index_topk
        if p + 1 <= k:
            mask[:p + 1] = 1.0
            return
        q = self.rows(iq, Hi * D)[row].view(Hi, D)
        q[:, :r] = self._rope(q[:, :r].clone(), p, d.index_interleave)  # in place, as the kernel
        keys = self.cached(c_ik, D)[self._crow(row), :p + 1]
        scores = torch.relu(q @ keys.T * D ** -0.5)
        index = (self.rows(iw, Hi)[row] * Hi ** -0.5) @ scores
        mask[torch.sort(index, descending=True, stable=True).indices[:k]] = 1.0

    def mla_uk(self, q: int, qlat: int, head: int, c0: int, c1: int, w: int) -> None:
        d = self.prog.dims
        h, nope, r, lora = d.n_head, d.nope, d.rope, d.kv_lora
        w_ukt = self.matrix(w + head * lora * row_stride(nope), lora, nope)  # [kv_lora, nope]
        q_nope = self.rows(q, h * (nope + r)).view(-1, h, nope + r)[:, head, :nope]
        self.rows(qlat, h * lora).view(-1, h, lora)[:, head, c0:c1] = q_nope @ w_ukt[c0:c1].T

    def mla_attn(self, q: int, qlat: int, olat: int, sel: int, row: int, head: int, c_lat: int, c_pe: int) -> None:
        """A token at the spare position (padding, a row not in the step) attends position 0 only, as the kernel."""
        d = self.prog.dims
        crow = self._crow(row)
        h, nope, r, lora = d.n_head, d.nope, d.rope, d.kv_lora
        spare = int(self.pos[row]) == self.prog.max_seq - 1
        p = 0 if spare else int(self.pos[row])
        q_lat = self.rows(qlat, h * lora)[row].view(h, lora)[head]
        q_pe = self.rows(q, h * (nope + r))[row].view(h, nope + r)[head, nope:]
        lat = self.cached(c_lat, lora)[crow, :p + 1]
        pe = self.cached(c_pe, r)[crow, :p + 1]
        scores = (q_lat @ lat.T + q_pe @ pe.T) * self.prog.scales["softmax"]
        if sel >= 0 and not spare:
            scores = scores.masked_fill(self.rows(sel, self.prog.max_seq)[row, :p + 1] == 0, float("-inf"))
        self.rows(olat, h * lora)[row].view(h, lora)[head] = torch.softmax(scores, dim=-1) @ lat

    def mla_uv(self, olat: int, att: int, head: int, c0: int, c1: int, w: int) -> None:
        d = self.prog.dims
        h, lora, v = d.n_head, d.kv_lora, d.v_head
        w_uv = self.matrix(w + head * v * row_stride(lora), v, lora)  # [v_head, kv_lora]
        o = self.rows(olat, h * lora).view(-1, h, lora)[:, head]
        self.rows(att, h * v).view(-1, h, v)[:, head, c0:c1] = o @ w_uv[c0:c1].T

    def route(self, rlog: int, route: int, row: int, bias: int) -> None:
        d = self.prog.dims
        E, k, G = d.experts, d.top_k, d.n_group
        scores = torch.sigmoid(self.rows(rlog, E)[row])
        choice = scores + self.W32[bias:bias + E]
        if G > 1:
            per = E // G
            group = choice.view(G, per).topk(min(2, per), dim=-1).values.sum(-1)
            keep = torch.zeros(G, dtype=torch.bool)
            keep[group.topk(d.topk_group).indices] = True
            choice = choice.masked_fill(~keep.repeat_interleave(per), float("-inf"))
        ids = choice.topk(k).indices
        weights = scores[ids]
        if d.norm_topk:
            weights = weights / (weights.sum() + 1e-20)
        out = self.rows(route, 2 * k)[row]
        out[:k] = ids.float()
        out[k:] = weights * self.prog.scales["routed"]

    def _expert(self, route: int, row: int, slot: int) -> tuple[int, Tensor]:
        k = self.prog.dims.top_k
        chosen = self.rows(route, 2 * k)[row]
        return int(chosen[slot]), chosen[k + slot]

    def expert_up(self, x: int, route: int, act: int, row: int, slot: int, w13: int, c0: int, c1: int,
                  norm: int, scale: int) -> None:
        d = self.prog.dims
        H, I = d.hidden, d.moe_inter
        e, _ = self._expert(route, row, slot)
        gate_up = self._expert_matrix(w13, e, 2 * I, H, scale).view(2, I, H)[:, c0:c1]  # only this expert
        h = self._rmsnorm(self.rows(x, H)[row], norm)
        self.rows(act, d.top_k * I)[row].view(-1, I)[slot, c0:c1] = F.silu(gate_up[0] @ h) * (gate_up[1] @ h)

    def expert_down(self, route: int, act: int, x: int, row: int, slot: int, w2: int, c0: int, c1: int,
                    scale: int) -> None:
        d = self.prog.dims
        H, I = d.hidden, d.moe_inter
        e, weight = self._expert(route, row, slot)
        down = self._expert_matrix(w2, e, H, I, scale)[c0:c1]
        self.rows(x, H)[row, c0:c1] += weight * (down @ self.rows(act, d.top_k * I)[row].view(-1, I)[slot])


class PeerGroup:
    """One VM per rank, each with its own arenas, running one step together. Ranks take turns, each running until
    it blocks on a PEER_WAIT, in the order given (any order a machine could interleave them in gives the same
    result when the program's flags are right); a round in which no rank moves is a deadlock, reported by rank and
    instruction instead of spinning."""

    def __init__(self, vms: list[VM]):
        self.vms = vms
        for rank, vm in enumerate(vms):
            vm.rank = rank
            vm.peers = vms

    def step(self, tokens: list[list[int]], pos: list[list[int]], order: list[int] | None = None) -> None:
        """Every rank's step (tokens, pos per rank; results in each VM's arenas). `order`: the ranks' turn order."""
        for vm in self.vms:
            vm.flags = [0] * NUM_FLAGS  # a fresh step (the kernel would compare against a step epoch instead)
        order = list(range(len(self.vms))) if order is None else order
        running = {r: self.vms[r].run(tokens[r], pos[r]) for r in order}
        blocked: dict[int, int] = {}
        while running:
            moved = False
            for r in list(running):
                before = blocked.get(r)
                try:
                    blocked[r] = next(running[r])
                except StopIteration:
                    del running[r]
                    blocked.pop(r, None)
                    moved = True
                    continue
                moved = moved or blocked[r] != before
            if not moved:
                where = ", ".join(f"rank {r} at instruction {i}" for r, i in sorted(blocked.items()))
                raise DependencyError(f"deadlock: every running rank waits for a peer flag nobody will set ({where})")

