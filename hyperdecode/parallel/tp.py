"""Plain tensor parallelism over `torch.distributed`, for the Llama family (Llama, Qwen3) and the GLM-5 / DeepSeek
family: each rank builds the same model class from a local config (its query heads, its kv heads, its slice of
every MLP's and expert's intermediate columns) and reads only its slices of the checkpoint's tensors; the attention
output projection and the MLP / MoE down projections are row-parallel, so their outputs are summed over the ranks
(`all_reduce`) before they join the residual stream. Embedding, norms, the LM head and, in the GLM-5 family, the
latent projections (q_a, kv_a), the DSA indexer and the router are replicated (every rank selects the same top-k
positions and experts).

Heads that do not split evenly are split unevenly (the first heads % W ranks take one more). Grouped-query
attention stays grouped when the kv heads split over the ranks (kv_heads % W == 0); otherwise each rank keeps, per
query head, a copy of that head's kv head (locally multi-head: more cache, the same attention).

>>> plan = split_heads(14, 2, world=4)
>>> [len(q) for q, _ in plan], [kv for _, kv in plan][0]
([4, 4, 3, 3], [0, 0, 0, 0])
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..model.registry import family_of

__all__ = ["split_heads", "split_range", "mla_heads", "local_config", "shard_tensors", "attach_all_reduce"]


def split_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rank `rank`'s [start, end) of n items split over `world` (the first n % world ranks take one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def split_heads(n_head: int, n_kv: int, world: int) -> list[tuple[list[int], list[int]]]:
    """Per rank: (its query heads, the kv head each local kv slot holds). Grouped when kv heads split evenly,
    else one kv slot per local query head (that head's kv head)."""
    group = n_head // n_kv
    plan = []
    for rank in range(world):
        if n_kv % world == 0:
            k0, k1 = split_range(n_kv, world, rank)
            plan.append((list(range(k0 * group, k1 * group)), list(range(k0, k1))))
        else:
            q0, q1 = split_range(n_head, world, rank)
            plan.append((list(range(q0, q1)), [q // group for q in range(q0, q1)]))
    return plan


def _mla(cfg: Any) -> bool:
    return family_of(cfg).mla


def mla_heads(cfg: Any, world: int, rank: int) -> list[int]:
    """Rank `rank`'s attention heads under plain TP (the GLM-5 family: no kv heads to group)."""
    return list(range(*split_range(cfg.num_attention_heads, world, rank)))


def local_config(cfg: Any, world: int, rank: int, heads: list[int] | None = None) -> Any:
    """The config of rank `rank`'s model: its heads (the GLM-5 family: `heads`, default `mla_heads`) and its share
    of the MLP's (and experts') intermediate columns."""
    i0, i1 = split_range(cfg.intermediate_size, world, rank)
    if _mla(cfg):
        heads = mla_heads(cfg, world, rank) if heads is None else heads
        m0, m1 = split_range(cfg.moe_intermediate_size, world, rank)
        return dataclasses.replace(cfg, num_attention_heads=len(heads), intermediate_size=i1 - i0,
                                   moe_intermediate_size=m1 - m0)
    q_heads, kv_slots = split_heads(cfg.num_attention_heads, cfg.num_key_value_heads, world)[rank]
    return dataclasses.replace(cfg, num_attention_heads=len(q_heads), num_key_value_heads=len(kv_slots),
                               intermediate_size=i1 - i0, head_dim=cfg.head_dim)


def _rows(t: Any, index: list[int], size: int) -> Tensor:
    """Rows [i * size, (i + 1) * size) of t for each i in index, in order (contiguous reads only)."""
    return torch.cat([t[i * size:(i + 1) * size] for i in index])


def _cols(t: Any, index: list[int], size: int) -> Tensor:
    return torch.cat([t[:, i * size:(i + 1) * size] for i in index], dim=1)


def shard_tensors(cfg: Any, get: Callable[[str], Any], world: int, rank: int, heads: list[int] | None = None,
                  keep: Callable[[str], bool] = lambda name: True) -> dict[str, Tensor]:
    """Rank `rank`'s HF-named tensors among those `keep` accepts; `get(name)` returns something sliceable like a
    tensor (a safetensors slice reads only the rows asked for). `heads` as in `local_config`. Biases of row-parallel
    projections stay on one rank (their outputs are summed): the MLP's on rank 0, o_proj's with head 0."""
    if _mla(cfg):
        q_heads = kv_slots = mla_heads(cfg, world, rank) if heads is None else heads
        per_head = {"q_b_proj": cfg.qk_head_dim, "kv_b_proj": cfg.qk_nope_head_dim + cfg.v_head_dim,
                    "o_proj": cfg.v_head_dim}
    else:
        q_heads, kv_slots = split_heads(cfg.num_attention_heads, cfg.num_key_value_heads, world)[rank]
        per_head = dict.fromkeys(("q_proj", "k_proj", "v_proj", "o_proj"), cfg.head_dim)
    out = {}
    for name, shape in family_of(cfg).shapes(cfg, False).items():
        if not keep(name):
            continue
        t = get(name)
        leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
        weight = name.endswith(".weight")
        if leaf in ("q_proj", "q_b_proj", "kv_b_proj") or (leaf in ("k_proj", "v_proj") and not _mla(cfg)):
            out[name] = _rows(t, kv_slots if leaf in ("k_proj", "v_proj") else q_heads, per_head[leaf])
        elif leaf == "o_proj":
            out[name] = _cols(t, q_heads, per_head[leaf]) if weight else torch.as_tensor(t[:]) * (0 in q_heads)
        elif leaf in ("gate_proj", "up_proj"):  # a dense MLP's, an expert's or the shared experts' columns
            out[name] = torch.as_tensor(t[slice(*split_range(shape[0], world, rank))])
        elif leaf == "down_proj":
            cols = slice(*split_range(shape[-1], world, rank)) if weight else None
            out[name] = torch.as_tensor(t[:, cols]) if weight else torch.as_tensor(t[:]) * (rank == 0)
        else:
            out[name] = torch.as_tensor(t[:])
    return out


def attach_all_reduce(model: nn.Module, reduce: Callable[[Tensor], None] | None = None) -> list[Any]:
    """Sums every layer's o_proj and MLP (or MoE: routed + shared experts) outputs over the ranks (forward hooks)
    with `reduce` (in place; default `dist.all_reduce`, on GPUs peer.links' one-shot all-reduce); returns the
    hooks' handles."""
    reduce = reduce or dist.all_reduce

    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        reduce(output)
        return output
    handles = []
    for layer in model.layers:
        handles.append(layer.self_attn.o_proj.register_forward_hook(hook))
        handles.append(layer.mlp.register_forward_hook(hook))
    return handles
