"""The heterogeneous plan (TileRT's device roles) for the GLM-5 / DeepSeek-V3.2 family: rank 0, the indexer rank,
runs only the DSA lightning indexer of every layer (its q_a projection, index q / k projections, RoPE, weights and
top-k) and sends the selected positions (int32 [B, S, index_topk]) to the attention ranks 1..W-1, which run MLA
with the heads split among them (unevenly when W-1 does not divide them) and no indexer weights at all. The MoE and
dense MLPs stay tensor-parallel over all W ranks (tp.py: a 1/W slice of every expert), so at batch 1 every rank
reads the same expert bytes whatever the router picks.

What the indexer rank does while the others attend: its work (scoring every cached index key, the top-k) overlaps
the attention ranks' q / kv projections and latent append, which do not need the selection; once it has sent the
positions it holds no heads, so during the sparse attention itself it waits in the output projection's all-reduce,
to which it adds zeros and from which it receives the attention output for its MoE slice. (On GPUs this is where
it could prefetch its next expert slices; not done.) Below index_topk keys every key is kept and nothing is sent:
both sides know T.

The hand-off goes through a `Channel`: `dist.broadcast` from rank 0 (gloo on CPUs, NCCL on GPUs), or on CUDA
ranks with symmetric memory a one-sided copy into each peer's receive buffer followed by a signal the peer waits
on (peer.py; the megakernel's PEER_WRITE / PEER_WAIT are the same two steps).

>>> hetero_heads(num_heads=7, world=4)
[[], [0, 1, 2], [3, 4], [5, 6]]
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError
from ..model.deepseek import MLA, Indexer, topk_mask
from .tp import local_config, shard_tensors, split_range

__all__ = ["INDEXER_RANK", "hetero_heads", "hetero_config", "hetero_tensors", "assign_roles", "IndexerRole",
           "ReceivedSelection", "Channel", "BroadcastChannel"]

INDEXER_RANK = 0


def hetero_heads(num_heads: int, world: int) -> list[list[int]]:
    """Per rank, its attention heads: none on the indexer rank, the rest split over ranks 1..W-1."""
    return [[]] + [list(range(*split_range(num_heads, world - 1, r))) for r in range(world - 1)]


def check_plan(cfg: Any, world: int) -> None:
    if not getattr(cfg, "has_indexer", False):
        raise ConfigError("parallel='hetero' gives rank 0 the DSA indexer, and this model has none (the GLM-5 and "
                          "DeepSeek-V3.2 presets do); use parallel='tp'")
    if world < 2:
        raise ConfigError(f"parallel='hetero' needs an indexer rank and at least one attention rank (world {world})")


def hetero_config(cfg: Any, world: int, rank: int) -> Any:
    """Rank `rank`'s local config: its heads and a 1/W share of every MLP's and expert's columns. The indexer
    rank's keeps every head: its attention modules become `IndexerRole`s before any weight is allocated, so the
    head count only shapes modules it never holds."""
    check_plan(cfg, world)
    heads = hetero_heads(cfg.num_attention_heads, world)[rank] or list(range(cfg.num_attention_heads))
    return local_config(cfg, world, rank, heads=heads)


def _holds(rank: int) -> Callable[[str], bool]:
    """Which HF tensors rank `rank` reads: rank 0 no attention besides the q latent and the indexer; the others no
    indexer."""
    indexer_only = ("self_attn.q_a_proj.", "self_attn.q_a_layernorm.", "self_attn.indexer.")
    if rank == INDEXER_RANK:
        return lambda name: "self_attn." not in name or any(k in name for k in indexer_only)
    return lambda name: "self_attn.indexer." not in name


def hetero_tensors(cfg: Any, get: Callable[[str], Any], world: int, rank: int) -> dict[str, Tensor]:
    """Rank `rank`'s HF-named tensors under the plan (read by slices as in tp.shard_tensors)."""
    heads = hetero_heads(cfg.num_attention_heads, world)[rank]
    return shard_tensors(cfg, get, world, rank, heads=heads, keep=_holds(rank))


class Channel:
    """The indexer rank's hand-off of top-k positions to the attention ranks."""

    def send(self, top: Tensor) -> None:
        raise NotImplementedError

    def receive(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        raise NotImplementedError


class BroadcastChannel(Channel):
    """`dist.broadcast` from the indexer rank: a collective every rank joins (gloo or NCCL)."""

    def send(self, top: Tensor) -> None:
        dist.broadcast(top.to(torch.int32).contiguous(), src=INDEXER_RANK)

    def receive(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        top = torch.empty(shape, dtype=torch.int32, device=device)
        dist.broadcast(top, src=INDEXER_RANK)
        return top


class ReceivedSelection(nn.Module):
    """An attention rank's stand-in for a layer's indexer: no weights, no key cache; `select` returns the positions
    the indexer rank sent, as the same boolean mask the indexer would build."""

    def __init__(self, topk: int, channel: Channel):
        super().__init__()
        self.topk = topk
        self.channel = channel

    def select(self, x: Tensor, q_lat: Tensor, cos: Tensor, sin: Tensor, keys: Tensor | None,
               causal: Tensor) -> Tensor:
        B, S, T = causal.shape
        if self.topk >= T:
            return topk_mask(None, causal)
        top = self.channel.receive((B, S, self.topk), causal.device)
        return topk_mask(top.long(), causal)


class NoHeads(nn.Module):
    """The indexer rank's output projection: it holds no heads, so its share of the attention output is zero (it
    still joins the all-reduce, which brings it the attention ranks' sum)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden

    def forward(self, o: Tensor) -> Tensor:
        return o.new_zeros(o.shape[0], self.hidden)


class IndexerRole(nn.Module):
    """The indexer rank's attention of one layer: the index key into its cache, the top-k of every query, sent to
    the attention ranks. Layers that reuse an earlier layer's selection (IndexShare) do nothing here."""

    def __init__(self, mla: MLA, channel: Channel):
        super().__init__()
        self.cfg = mla.cfg
        self.q_a_proj = mla.q_a_proj
        self.q_a_layernorm = mla.q_a_layernorm
        self.indexer = mla.indexer
        self.o_proj = NoHeads(mla.cfg.hidden_size)
        self.channel = channel
        self.cache = None

    @property
    def cached(self) -> tuple[str, ...]:
        """Of the layer's cache, only the indexer key (none in a layer that shares an earlier selection)."""
        return ("ik",) if self.indexer is not None else ()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, step: Any, causal: list[Tensor],
                prev_topk: list[Tensor | None]) -> tuple[Tensor, list[Tensor | None]]:
        if self.indexer is None:
            return self.o_proj(x), prev_topk
        q_lat = self.q_a_layernorm(self.q_a_proj(x))
        key = self.indexer.key(x, cos, sin)
        topks = []
        for group, causal_g in zip(step.groups, causal):
            keys = group.take(key)
            if group.cache is not None:
                keys = self.cache.update(group.pos, [keys], group.cache)[0]
            top = self.indexer.top(group.take(x), group.take(q_lat), group.take(cos), group.take(sin), keys, causal_g)
            if top is not None:
                self.channel.send(top)
            topks.append(topk_mask(top, causal_g))
        return self.o_proj(x), topks


def assign_roles(model: nn.Module, rank: int, channel: Channel) -> None:
    """Turns rank `rank`'s model (built from `hetero_config`, still on the meta device) into its role: rank 0's
    attention modules become `IndexerRole`s, the attention ranks' indexers become `ReceivedSelection`s."""
    for layer in model.layers:
        mla = layer.self_attn
        if rank == INDEXER_RANK:
            layer.self_attn = IndexerRole(mla, channel)
        elif isinstance(mla.indexer, Indexer):
            mla.indexer = ReceivedSelection(mla.indexer.topk, channel)
