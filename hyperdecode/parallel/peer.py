"""One-sided communication between CUDA ranks through symmetric memory (`torch.distributed._symmetric_memory`):
buffers every rank of the group maps, written or read over NVLink by plain stores and loads, ordered by signals.
Two uses, the two a megakernel would take inside itself (the VM's PEER_WRITE / PEER_WAIT / REDUCE):

- `SymmetricChannel`: the hetero plan's hand-off of top-k positions; the indexer rank copies them into every
  attention rank's receive buffer and raises that rank's signal; the receiver's stream waits on it.
- `SymmetricAllReduce`: the output projection's and the MoE's sums at decode sizes, torch's one-shot all-reduce
  (each rank copies its partial into its buffer, then sums every peer's buffer); larger messages (prefill chunks)
  go through NCCL's all_reduce, where bandwidth matters more than latency.

Written for NCCL process groups on GPUs with peer access; no CUDA machine with several GPUs has run it yet. The
CPU (gloo) ranks and any rank where symmetric memory is not available use broadcast and all_reduce, and all ranks
agree on the choice (`links`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

from .hetero import INDEXER_RANK, BroadcastChannel, Channel

__all__ = ["SymmetricChannel", "SymmetricAllReduce", "links", "WAIT_MS"]

WAIT_MS = 120_000  # a receiver's bound on a peer's signal (launch.TIMEOUT_S)


def _group_name(group: Any) -> str:
    return (group or dist.group.WORLD).group_name


class SymmetricChannel(Channel):
    """One receive buffer per rank in symmetric memory, `slots` slots of `tokens` × index_topk positions. Sends
    take the slots in turn and so do receives, in the same order on both sides; a layer's groups (at most `slots`)
    never overwrite each other, and the all-reduce that ends every layer orders a slot's next write after its last
    read. A message larger than a slot goes by broadcast (both sides know its shape)."""

    def __init__(self, topk: int, device: torch.device, tokens: int = 1024, slots: int = 16, group: Any = None):
        import torch.distributed._symmetric_memory as symm_mem
        self.numel = tokens * topk
        self.slots = slots
        self.slot = 0
        self.buffer = symm_mem.empty(slots * self.numel, dtype=torch.int32, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, _group_name(group))
        self.fallback = BroadcastChannel()

    def _take(self) -> int:
        slot = self.slot
        self.slot = (slot + 1) % self.slots
        return slot

    def send(self, top: Tensor) -> None:
        if top.numel() > self.numel:
            return self.fallback.send(top)
        slot = self._take()
        flat = top.to(torch.int32).flatten()
        for peer in range(self.handle.world_size):
            if peer == INDEXER_RANK:
                continue
            remote = self.handle.get_buffer(peer, (flat.numel(),), torch.int32, slot * self.numel)
            remote.copy_(flat)  # NVLink stores into the peer's buffer
            self.handle.put_signal(peer, channel=slot, timeout_ms=WAIT_MS)

    def receive(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        n = math.prod(shape)
        if n > self.numel:
            return self.fallback.receive(shape, device)
        slot = self._take()
        self.handle.wait_signal(INDEXER_RANK, channel=slot, timeout_ms=WAIT_MS)
        return self.buffer[slot * self.numel:slot * self.numel + n].view(shape).clone()


class SymmetricAllReduce:
    """Sums a tensor over the ranks in place: torch's one-shot all-reduce through a symmetric buffer of `numel`
    elements when it fits, NCCL's all_reduce otherwise."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device, group: Any = None):
        import torch.distributed._symmetric_memory as symm_mem
        self.group = group
        self.group_name = _group_name(group)
        self.buffer = symm_mem.empty(numel, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, self.group_name)

    def __call__(self, t: Tensor) -> None:
        if t.numel() > self.buffer.numel() or t.dtype != self.buffer.dtype:
            dist.all_reduce(t, group=self.group)
            return
        total = torch.ops.symm_mem.one_shot_all_reduce_copy(self.buffer, t.contiguous().view(-1), "sum",
                                                            self.group_name)
        t.copy_(total[:t.numel()].view_as(t))


def _agreed(make: Callable[[], Any], device: torch.device) -> Any:
    """make() on every rank, kept only when it worked on all of them (a MIN all-reduce of the outcome)."""
    try:
        made = make()
    except (ImportError, RuntimeError, AttributeError):  # no peer access, or no symmetric memory in this build
        made = None
    ok = torch.tensor([int(made is not None)], dtype=torch.int32, device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return made if ok.item() else None


def links(cfg: Any, device: torch.device, dtype: torch.dtype, hetero: bool) -> tuple[Channel | None,
                                                                                     Callable[[Tensor], None]]:
    """(the hetero hand-off channel or None, the all-reduce) for this rank: symmetric memory on CUDA ranks when
    every rank has it, else broadcast and `dist.all_reduce`."""
    reduce: Callable[[Tensor], None] = dist.all_reduce
    channel: Channel | None = BroadcastChannel() if hetero else None
    if device.type != "cuda":
        return channel, reduce
    fast_reduce = _agreed(lambda: SymmetricAllReduce(1 << 19, dtype, device), device)  # 1 MiB at bf16
    if fast_reduce is not None:
        reduce = fast_reduce
    if hetero:
        channel = _agreed(lambda: SymmetricChannel(cfg.index_topk, device), device) or channel
    return channel, reduce
