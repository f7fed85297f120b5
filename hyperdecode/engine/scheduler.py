"""Continuous batching over cache slots, as a step plan: each step, every running sequence is told how many of its
tokens to feed (vLLM v1's shape). A decoding sequence feeds its newest token; a sequence still prefilling feeds
the next chunk of its prompt, within the step's token budget, next to the decoding rows (chunked prefill); a
waiting sequence is admitted into a free slot while the budget lasts. Without a budget whole prompts are fed. With
speculative decoding a decoding sequence also feeds its draft (1 + len(draft) tokens, verified in the same step).
With prefix caching (prefix.py) an admitted sequence starts after the longest prefix a cache row already holds: it
takes that row, or a free row into which the core copies the prefix before the step (`seq.reuse`).
With a KV connector (kv_connector.py) two more things happen to rows: a sequence whose prompt a peer computed is
admitted into a row and sits out the steps while the core fills the row (`take_loads`), and a row a peer must
still read (a producer's finished sequence, or a load still writing into an aborted sequence's row) is held, not
freed, until the core calls `release`.

>>> from hyperdecode.engine.sampling import SamplingParams
>>> s = Scheduler(max_batch=2, max_seq=64, max_num_batched_tokens=8)
>>> a, b = Sequence(list(range(6)), SamplingParams()), Sequence(list(range(5)), SamplingParams())
>>> s.add(a); s.add(b)
>>> [(seq is a, n) for seq, n in s.schedule()]
[(True, 6), (False, 2)]
"""
from __future__ import annotations

import collections

from ..errors import ConfigError
from .prefix import PrefixCache
from .sequence import Sequence, Status

__all__ = ["Scheduler", "StepPlan"]

StepPlan = list[tuple[Sequence, int]]  # (sequence, tokens it feeds this step), in the order they were admitted


class Scheduler:
    def __init__(self, max_batch: int, max_seq: int, max_num_batched_tokens: int | None = None,
                 prefix_caching: bool = True):
        self.prefix_caching = prefix_caching
        self.prefix = PrefixCache(0)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_batch = 0
        self.max_seq = 0
        self.free: list[int] = []
        self.held: dict[Sequence, int] = {}  # rows a transfer still uses, by the sequence that filled them
        self.loads: list[Sequence] = []  # admitted sequences whose rows the core must fill from a peer
        self.holds: list[Sequence] = []  # ended sequences whose rows the core must describe for a peer
        self.resize(max_batch, max_seq)

    def resize(self, max_batch: int, max_seq: int) -> None:
        """New limits: only while no sequence holds a slot (the caches behind the slots are reallocated)."""
        if self.running or self.held:
            raise RuntimeError("the scheduler can only be resized while no sequence is running or held")
        budget = self.max_num_batched_tokens
        if budget is not None and budget < max_batch:
            raise ConfigError(f"max_num_batched_tokens ({budget}) must be at least the batch size ({max_batch}): "
                              "every decoding sequence feeds one token per step")
        self.max_batch = max_batch
        self.max_seq = max_seq
        self.free = list(range(max_batch - 1, -1, -1))
        self.prefix.grow(max_batch)  # the caches keep their rows' contents as they grow

    @property
    def num_free(self) -> int:
        """Slots not taken by a running sequence nor promised to a waiting one."""
        return len(self.free) - len(self.waiting)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def schedule(self) -> StepPlan:
        """This step's plan: decoding rows (one token each, plus their drafts), then prompt chunks in admission
        order."""
        budget = self.max_num_batched_tokens
        left = float("inf") if budget is None else budget
        plan: StepPlan = []
        decoding = [seq for seq in self.running if not seq.prefilling and not seq.loading]
        left -= len(decoding)  # every decoding row feeds its newest token; drafts get what the budget leaves
        for seq in decoding:
            extra = int(min(len(seq.draft), max(left, 0)))
            plan.append((seq, 1 + extra))
            left -= extra
        for seq in self.running:
            if seq.prefilling and not seq.loading and left > 0:
                n = int(min(seq.remaining, left))
                plan.append((seq, n))
                left -= n
        while self.waiting and self.free and left > 0 and self._ready(self.waiting[0]):
            seq = self.waiting.popleft()
            self._admit(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            if seq.kv is not None and seq.kv.consumer:  # the peer computed its prompt: the core fills the row first
                seq.kv.loading, seq.kv.first, seq.kv.last = True, seq.num_computed, len(seq.prompt_ids)
                self.loads.append(seq)
                continue
            n = int(min(seq.remaining, left))
            plan.append((seq, n))
            left -= n
        return plan

    def take_loads(self) -> list[Sequence]:
        """Sequences admitted since the last call whose rows the core must fill from a peer."""
        loads, self.loads = self.loads, []
        return loads

    def take_holds(self) -> list[Sequence]:
        """Sequences ended since the last call whose rows are held for a peer."""
        holds, self.holds = self.holds, []
        return holds

    def release(self, seq: Sequence) -> None:
        """A held row is free again; what it holds is reusable unless a transfer into it was cut short."""
        row = self.held.pop(seq, None)
        if row is None:
            return
        self.free.append(row)
        if seq.finish_reason == "error" or seq.loading or seq.reuse is not None:
            self.prefix.forget(row)
        else:
            self.prefix.store(row, seq.token_ids[:seq.num_computed])

    def reset_prefix_cache(self) -> None:
        """Forgets what every row holds (their caches were cleared, or should not be reused)."""
        self.prefix.clear()

    def _ready(self, seq: Sequence) -> bool:
        """A sibling of a parallel-sampling request (n > 1) waits until the first one's prompt is in the cache,
        whose prefix it then reuses."""
        first = seq.after
        if first is None or not self.prefix_caching or first.done:
            return True
        return first.status is Status.RUNNING and not first.prefilling

    def _admit(self, seq: Sequence) -> None:
        """Gives a sequence its slot: with prefix caching the row that holds (or receives) its longest cached
        prefix, which it then does not feed (nor when it asks for prompt logprobs: every position is scored)."""
        if not self.prefix_caching or seq.params.prompt_logprobs is not None:
            seq.slot = self.free.pop()
            self.prefix.forget(seq.slot)
            return
        running = {r.slot: r.token_ids[:r.num_computed] for r in self.running}
        take, source, n = self.prefix.choose(seq.prompt_ids, self.free, running)
        self.free.remove(take)
        seq.slot = take
        seq.num_computed = seq.num_cached = n
        seq.reuse = (source, take, n) if n else None

    def append(self, seq: Sequence, token: int) -> None:
        """Adds a sampled token; finishes the sequence on EOS, at max_tokens or at the end of its cache row."""
        if token in seq.eos_ids and not seq.params.ignore_eos:
            self.end(seq, "stop")
            return
        seq.token_ids.append(token)
        limit = seq.params.max_tokens
        if (limit is not None and seq.num_output >= limit) or seq.num_tokens >= self.max_seq:
            self.end(seq, "length")

    def end(self, seq: Sequence, reason: str) -> None:
        """Ends a sequence (any reason: EOS, length, a stop string, abort) and frees its slot. Idempotent."""
        if seq.done:
            return
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
            if seq.loading:  # a transfer still writes into its row: held until the load ends
                self.held[seq] = seq.slot
                return
            if seq.kv is not None and seq.kv.producer and reason in ("stop", "length"):
                self.held[seq] = seq.slot  # its prompt's cache, for the peer that decodes it
                self.holds.append(seq)
                return
            self.free.append(seq.slot)
            if reason == "error" or seq.reuse is not None:  # a failed row, or one whose prefix never arrived
                self.prefix.forget(seq.slot)
            else:
                self.prefix.store(seq.slot, seq.token_ids[:seq.num_computed])
