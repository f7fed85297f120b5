"""How one forward's tokens are laid out. A step is [B, S] tokens at positions pos [B, S]; rows may be right-padded
(pos = -1) so that decode rows, prompt chunks and verification rows of different lengths share one forward. The
token-wise layers (projections, MLP, MoE) run once over the real tokens packed flat; attention runs per group of
rows with the same number of tokens, each group with its own view of the cache.

>>> import torch
>>> step = Step(None, torch.tensor([[5, 6, 7], [8, 0, 0]]), torch.tensor([[3, 4, 5], [9, -1, -1]]), None, False)
>>> step.tokens.tolist(), [(g.rows.tolist(), g.length) for g in step.groups]
([5, 6, 7, 8], [([0], 3), ([1], 1)])
>>> step.unpack(step.pos[:, None]).squeeze(-1).tolist()  # padded positions come back as 0
[[3, 4, 5], [9, 0, 0]]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .static import is_static

__all__ = ["Step", "RowGroup", "CacheView"]


@dataclass
class CacheView:
    """Where one group reads and writes the cache: rows `index` (its cache rows); `slots` None when they are
    0..B-1 in order (then reads slice the cache instead of gathering); positions below `length`."""
    length: int
    index: Tensor
    slots: Tensor | None = None

    def read(self, buf: Tensor, batch: int) -> Tensor:
        return buf[:batch, :self.length] if self.slots is None else buf[self.slots, :self.length]


@dataclass
class RowGroup:
    """Rows of a step that feed the same number of tokens; their tokens are flat[start:start + batch * length]."""
    rows: Tensor
    start: int
    batch: int
    length: int
    pos: Tensor  # [batch, length]
    cache: CacheView | None  # None: attend within the group's own tokens (no cache)
    key_pos: Tensor  # [batch, T]: the positions of the keys the group attends to

    def take(self, flat: Tensor) -> Tensor:
        """This group's slice of a flat per-token tensor, as [batch, length, ...]."""
        end = self.start + self.batch * self.length
        return flat[self.start:end].view(self.batch, self.length, *flat.shape[1:])

    def causal(self) -> Tensor:
        """[batch, length, T]: which keys each query may see."""
        return self.key_pos[:, None, :] <= self.pos[:, :, None]


class Step:
    """The real tokens of a [B, S] step packed flat (`tokens`, `pos` [N]) and grouped by length (`groups`)."""

    def __init__(self, model: Any, tokens: Tensor, pos: Tensor, slots: Tensor | None, use_cache: bool):
        B, S = tokens.shape
        self.shape = (B, S)
        self.order: Tensor | None = None  # flat index of each packed token in [B * S]; None: all of them, in order
        padded = not is_static() and bool((pos < 0).any())
        if not padded:
            self.tokens = tokens.reshape(-1)
            self.pos = pos.reshape(-1)
            rows = torch.arange(B, device=tokens.device)
            self.groups = [self._group(model, rows, 0, S, pos, slots, use_cache, whole=True)]
            return
        lengths = (pos >= 0).sum(1).tolist()
        order, self.groups = [], []
        for length in sorted({n for n in lengths if n > 0}, reverse=True):
            rows = [r for r, n in enumerate(lengths) if n == length]
            group_rows = torch.tensor(rows, device=tokens.device)
            group_slots = group_rows if slots is None else slots[group_rows]
            group = self._group(model, group_rows, len(order), length, pos[group_rows, :length], group_slots,
                                use_cache, whole=False)
            self.groups.append(group)
            order += [r * S + j for r in rows for j in range(length)]
        self.order = torch.tensor(order, device=tokens.device)
        self.tokens = tokens.reshape(-1)[self.order]
        self.pos = pos.reshape(-1)[self.order]

    @staticmethod
    def _group(model: Any, rows: Tensor, start: int, length: int, pos: Tensor, slots: Tensor | None,
               use_cache: bool, whole: bool) -> RowGroup:
        batch = len(rows)
        if not use_cache:
            return RowGroup(rows, start, batch, length, pos, None, pos)
        if is_static():  # the caller checked the bounds; every cache position is read, masked by position
            key_pos = torch.arange(model.max_seq, device=pos.device).expand(batch, -1)
            index = rows if slots is None else slots
            return RowGroup(rows, start, batch, length, pos, CacheView(model.max_seq, index, slots), key_pos)
        top = int(slots.max()) + 1 if slots is not None else batch
        if top > model.max_batch or int(pos.max()) >= model.max_seq:
            raise ValueError(f"the cache holds {model.max_batch}x{model.max_seq}; call setup_caches first")
        index = rows if slots is None else slots
        if not whole and slots.tolist() == list(range(batch)):
            slots = None  # rows 0..batch-1 in order: the cache is sliced, not gathered
        view_length = int(pos.max()) + 1
        key_pos = torch.arange(view_length, device=pos.device).expand(batch, -1)
        return RowGroup(rows, start, batch, length, pos, CacheView(view_length, index, slots), key_pos)

    def join(self, parts: list[Tensor]) -> Tensor:
        """Per-group results (flattened to [tokens, ...], in group order) as one flat tensor."""
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def unpack(self, flat: Tensor) -> Tensor:
        """A flat per-token tensor [N, ...] back in the step's [B, S, ...] layout (zeros at padding)."""
        B, S = self.shape
        if self.order is None:
            return flat.view(B, S, *flat.shape[1:])
        out = flat.new_zeros(B * S, *flat.shape[1:])
        out[self.order] = flat
        return out.view(B, S, *flat.shape[1:])
