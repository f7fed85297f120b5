"""The Python VM: runs a `Program` instruction by instruction with plain torch ops — the megakernel's oracle."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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
        """Copies a reference model's cache (after its prefill) into the cache arena: K/V, or latents, roped keys
        and indexer keys for the MLA family."""
        B, T = self.prog.batch, self.prog.max_seq
        for i, layer in enumerate(model.layers):
            c = layer.self_attn.cache
            if self.prog.cache:
                for name, t in zip(("lat", "pe", "ik"), c.tensors):
                    self.mla_cache(i, name, t.shape[-1]).copy_(t[:B, :T].float())
            else:
                for which, t in ((0, c.k), (1, c.v)):
                    self.cache(i, which).copy_(t[:B, :, :T].float())

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

    # --- the GLM-5 / DeepSeek family ------------------------------------------------------------------------------

    def mla_cache(self, layer: int, name: str, width: int) -> Tensor:
        off = self.prog.cache[f"{layer}.{name}"]
        return self.C[off:off + self.prog.batch * self.prog.max_seq * width].view(self.prog.batch, -1, width)

    def norm_slice(self, x: int, x_stride: int, w: int, bias: int, out: int, n: int, eps: int) -> None:
        v = self.rows(x, x_stride)[:, :n].clone()
        e = float(self.prog.W[eps])
        if bias < 0:
            y = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + e) * self.prog.W[w:w + n]
        else:
            y = F.layer_norm(v, (n,), self.prog.W[w:w + n], self.prog.W[bias:bias + n], e)
        self.rows(out, n).copy_(y)

    def _rope(self, x: Tensor, p: int, interleaved: int) -> Tensor:
        d = self.prog.dims
        freqs = p * self.prog.W[d["inv_freq"]:d["inv_freq"] + x.shape[-1] // 2]
        f = self.prog.scales["rope_factor"]
        cos, sin = freqs.cos() * f, freqs.sin() * f
        x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def rope_mla(self, row: int, layer: int) -> None:
        d, b = self.prog.dims, self.prog.buf
        h, nope, r, L = d["n_head"], d["nope"], d["rope"], d["kv_lora"]
        p = int(self.pos[row])
        q = self.rows(b["q"], h * (nope + r))[row].view(h, nope + r)
        q[:, nope:] = self._rope(q[:, nope:].clone(), p, d["rope_interleave"])
        kva = self.rows(b["kva"], L + r)[row]
        self.mla_cache(layer, "lat", L)[row, p] = self.rows(b["lat"], L)[row]
        self.mla_cache(layer, "pe", r)[row, p] = self._rope(kva[L:].clone(), p, d["rope_interleave"])

    def index_key(self, row: int, layer: int) -> None:
        d, b = self.prog.dims, self.prog.buf
        D, r = d["index_dim"], d["rope"]
        k = self.rows(b["ik"], D)[row].clone()
        k[:r] = self._rope(k[:r].clone(), int(self.pos[row]), d["index_interleave"])
        self.mla_cache(layer, "ik", D)[row, int(self.pos[row])] = k

    def index_topk(self, row: int, layer: int) -> None:
        d, b = self.prog.dims, self.prog.buf
        D, r, Hi = d["index_dim"], d["rope"], d["index_heads"]
        p = int(self.pos[row])
        q = self.rows(b["iq"], Hi * D)[row].view(Hi, D).clone()
        q[:, :r] = self._rope(q[:, :r].clone(), p, d["index_interleave"])
        keys = self.mla_cache(layer, "ik", D)[row, :p + 1]
        scores = torch.relu(q @ keys.T * D ** -0.5)
        w = self.rows(b["iw"], Hi)[row] * Hi ** -0.5
        index = w @ scores
        sel = self.rows(b["sel"], self.prog.max_seq)[row]
        sel.zero_()
        k = min(d["index_topk"], p + 1)
        sel[torch.sort(index, descending=True, stable=True).indices[:k]] = 1.0

    def mla_attn(self, row: int, head: int, layer: int, w: int, masked: int) -> None:
        d, b = self.prog.dims, self.prog.buf
        h, nope, r, L, v = d["n_head"], d["nope"], d["rope"], d["kv_lora"], d["v_head"]
        p = int(self.pos[row])
        kv_b = self.prog.W[w:w + h * (nope + v) * L].view(h, nope + v, L)[head]
        q = self.rows(b["q"], h * (nope + r))[row].view(h, nope + r)[head]
        lat = self.mla_cache(layer, "lat", L)[row, :p + 1]
        pe = self.mla_cache(layer, "pe", r)[row, :p + 1]
        scores = ((q[:nope] @ kv_b[:nope]) @ lat.T + q[nope:] @ pe.T) * self.prog.scales["softmax"]
        if masked:
            scores = scores.masked_fill(self.rows(b["sel"], self.prog.max_seq)[row, :p + 1] == 0, float("-inf"))
        o = torch.softmax(scores, dim=-1) @ lat
        self.rows(b["att"], h * v)[row].view(h, v)[head] = kv_b[nope:] @ o

    def route(self, row: int, bias: int) -> None:
        d, b = self.prog.dims, self.prog.buf
        E, k, G = d["experts"], d["top_k"], d["n_group"]
        scores = torch.sigmoid(self.rows(b["rlog"], E)[row])
        choice = scores + self.prog.W[bias:bias + E]
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
        out = self.rows(b["route"], 2 * k)[row]
        out[:k], out[k:] = ids.float(), weights * self.prog.scales["routed"]

    def expert(self, row: int, slot: int, w1: int, w3: int, w2: int) -> None:
        d, b = self.prog.dims, self.prog.buf
        H, I, k = d["hidden"], d["moe_inter"], d["top_k"]
        route = self.rows(b["route"], 2 * k)[row]
        e, weight = int(route[slot]), route[k + slot]
        size = I * H  # only this expert's weights are read
        x = self.rows(b["h"], H)[row]
        gate = self.prog.W[w1 + e * size:w1 + (e + 1) * size].view(I, H) @ x
        up = self.prog.W[w3 + e * size:w3 + (e + 1) * size].view(I, H) @ x
        y = self.prog.W[w2 + e * size:w2 + (e + 1) * size].view(H, I) @ (F.silu(gate) * up)
        self.rows(b["x"], H)[row] += weight * y
