"""A prefill instance: its queue, the prefills in flight (chunked prefill: up to `prefill_slots` requests share the
instance's compute equally), its KV memory and, over several servers, its expert-parallel all-to-all.

A request queues at the instance with the least queued work. It starts once a slot is free and its KV fits the
instance's memory (`prefill_kv_gb`, held from the prefill's start until its KV transfer has ended, so a slow
transfer stalls later prefills). It is computed on one DP rank (`kv_split`: a random rank; the rank's GPU holds its
KV and fetches its cached prefix) at its share of the instance's rate, prefill_tok_s per server times the servers,
times the speed the all-to-all allows. Its prefill ends when its computed tokens are done and its prefix fetch
(overlapped with the compute, layer by layer) has arrived; the slot stays taken until then.

Equal sharing is kept with a virtual clock: each running prefill finishes when the clock, advancing at rate / n,
has passed its computed tokens.

>>> inst = PrefillInstance.__new__(PrefillInstance)
>>> inst.computing, inst.virtual = {1: 5.0, 2: 9.0}, 3.0
>>> inst.next_finish()  # tokens left of the first to finish
2.0
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from ..events import Timer
from .transfers import AllToAll, Transfer
from .workload import BLOCK_TOKENS

__all__ = ["PrefillInstance"]


class PrefillInstance:
    """A prefill instance: its queue, the prefills in flight sharing its compute, their KV sends."""
    def __init__(self, cluster: Any, index: int, gpus: np.ndarray):
        self.cluster = cluster
        self.index = index
        self.gpus = [int(g) for g in gpus]
        per_server = cluster.topo.gpus_per_server
        self.servers = max(len(self.gpus) // per_server, 1)
        self.rate = cluster.model.prefill_tok_s * self.servers  # computed tokens/s at full speed (per server)
        self.waiting: deque[int] = deque()
        self.queued_tokens = 0.0  # prompt tokens queued or in prefill: where an arrival goes
        self.memory = 0.0
        self.in_prefill: set[int] = set()
        self.computing: dict[int, float] = {}  # request -> the virtual time it finishes at
        self.virtual = 0.0
        self.since = 0.0
        self.pending: dict[int, int] = {}  # request -> parts of its prefill still running (compute, fetch)
        self.all_to_all = None
        if cluster.ep and self.servers > 1:
            self.all_to_all = AllToAll(cluster, self.gpus, per_server, self._speed_changed, ident=2 * index)
            self.ep_per_token = cluster.model.ep_bytes_per_token(self.servers, prefill=True)
        self.speed = 1.0
        self.timer = Timer(cluster.queue, self._compute_done)

    def arrive(self, request: int) -> None:
        self.queued_tokens += self.cluster.input_tokens[request]
        self.waiting.append(request)
        self.start_next()

    def start_next(self) -> None:
        c = self.cluster
        while self.waiting and len(self.in_prefill) < c.cfg.prefill_slots:
            request = self.waiting[0]
            kv = c.kv_bytes[request]
            if self.memory > 0 and self.memory + kv > c.prefill_capacity:
                return  # waits for a KV transfer to end
            self.waiting.popleft()
            self.memory += kv
            self._start(request)

    def _start(self, request: int) -> None:
        c = self.cluster
        c.run.prefill_of[request] = self.index
        c.run.prefill_start_s[request] = c.queue.now
        gpu = self.gpus[int(c.src_rank[request]) % len(self.gpus)]
        hits, fetches = c.store.lookup(request, gpu) if c.cfg.prefix_cache else (0, [])
        c.run.prefix_hit_blocks[request] = hits
        computed = float(c.input_tokens[request] - hits * BLOCK_TOKENS)
        self.in_prefill.add(request)
        self.pending[request] = 1
        for holder, to, nbytes in fetches:
            fetch = Transfer(c, "fetch", request, c.slices(holder, to), nbytes, lambda r=request: self._part_done(r),
                             lambda r=request: self._fetch_cut(r))
            if fetch.start():
                self.pending[request] += 1
                c.run.fetch_bytes += nbytes
        self._advance()
        self.computing[request] = self.virtual + computed
        if self.all_to_all is not None:
            c.run.ep_bytes += computed * self.ep_per_token
            if len(self.computing) == 1:
                self.all_to_all.run(self.rate * self.ep_per_token / self.all_to_all.qps)
                self.speed = self.all_to_all.speed
        self._reschedule()

    def _fetch_cut(self, request: int) -> None:
        self._part_done(request)  # a fetch a failure cut off: those blocks are computed instead, in its time

    # --- the shared compute -------------------------------------------------------------------------------------
    def next_finish(self) -> float:
        """Tokens (of each running prefill's share) until the next one finishes."""
        return min(self.computing.values()) - self.virtual

    def _advance(self) -> None:
        now = self.cluster.queue.now
        if self.computing:
            self.virtual += (now - self.since) * self.rate * self.speed / len(self.computing)
        self.since = now

    def _reschedule(self) -> None:
        if not self.computing or self.speed <= 0:
            self.timer.cancel()
            return
        share = self.rate * self.speed / len(self.computing)
        self.timer.set(self.cluster.queue.now + max(self.next_finish(), 0.0) / share)

    def _speed_changed(self) -> None:
        self._advance()
        self.speed = self.all_to_all.speed if self.all_to_all is not None else 1.0
        self._reschedule()

    def _compute_done(self) -> None:
        self._advance()
        done = sorted((finish, r) for r, finish in self.computing.items()
                      if finish <= self.virtual * (1 + 1e-12) + 1e-9)
        done = [r for _, r in done]
        for request in done:
            del self.computing[request]
        if not self.computing and self.all_to_all is not None:
            self.all_to_all.stop()
            self.speed = 1.0
        self._reschedule()
        for request in done:
            self._part_done(request)

    def _part_done(self, request: int) -> None:
        self.pending[request] -= 1
        if self.pending[request] == 0:
            del self.pending[request]
            self._prefilled(request)

    def _prefilled(self, request: int) -> None:
        c = self.cluster
        self.in_prefill.discard(request)
        self.queued_tokens -= c.input_tokens[request]
        c.run.prefill_end_s[request] = c.queue.now
        c.admission.add(request)
        self.start_next()

    def kv_left(self, request: int) -> None:
        """The request's KV transfer has ended (or failed): its memory is free."""
        self.memory -= self.cluster.kv_bytes[request]
        self.start_next()
