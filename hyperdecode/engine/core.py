"""The engine core: a runner and a scheduler, long-lived (caches allocated once, grown when a call needs more).
Each `step()` asks the scheduler for a plan, runs it on the runner as [B, S] forwards (one per chunk length:
decoding rows together, equal prompt chunks together), samples where a row's fed tokens reach its newest token,
and returns the sequences that sampled. `hd.LLM` and the server both drive one."""
from __future__ import annotations

import itertools

import torch

from .runner import ReferenceRunner
from .sampling import sample_rows
from .scheduler import Scheduler
from .sequence import Sequence

__all__ = ["EngineCore"]


class EngineCore:
    def __init__(self, runner: ReferenceRunner, max_num_batched_tokens: int | None = None):
        self.runner = runner
        self.device = runner.device
        self.scheduler = Scheduler(0, 0, max_num_batched_tokens)
        self.steps = 0

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def max_seq(self) -> int:
        return self.scheduler.max_seq

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def reserve(self, max_batch: int, max_seq: int) -> None:
        """Grows the slots and cache rows to at least `max_batch` x `max_seq` (only while idle); never shrinks."""
        if max_batch <= self.max_batch and max_seq <= self.max_seq:
            return
        if self.has_unfinished:
            raise RuntimeError("the engine core can only grow while no request is in flight")
        max_batch = max(max_batch, self.max_batch)
        max_seq = max(max_seq, self.max_seq)
        self.runner.setup(max_batch, max_seq)
        self.scheduler.resize(max_batch, max_seq)

    def add(self, seq: Sequence) -> None:
        """Queues a sequence (built by `InputProcessor`); it is admitted when a slot is free."""
        seq.generator = torch.Generator(device=self.device)
        if seq.params.seed is not None:
            seq.generator.manual_seed(seq.params.seed)
        else:
            seq.generator.seed()
        self.scheduler.add(seq)

    def finish(self, seq: Sequence, reason: str, num_output: int | None = None) -> None:
        """Ends a sequence now (a stop string: keep its first `num_output` tokens; or an abort) and frees its slot."""
        if num_output is not None:
            del seq.token_ids[len(seq.prompt_ids) + num_output:]
        self.scheduler.finish(seq, reason)

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One step of the plan; returns the sequences that sampled a token (or finished by sampling EOS)."""
        plan = self.scheduler.schedule()
        if not plan:
            return []
        sampled = []
        by_length = sorted(plan, key=lambda row: row[1])
        for n, group in itertools.groupby(by_length, key=lambda row: row[1]):
            sampled += self._forward([seq for seq, _ in group], n)
        self.steps += 1
        return sampled

    def _forward(self, seqs: list[Sequence], n: int) -> list[Sequence]:
        """One [len(seqs), n] forward: each row feeds its next n tokens; rows whose n tokens reach their newest
        token get a logit row and sample."""
        starts = [seq.num_computed for seq in seqs]
        tokens = torch.tensor([seq.token_ids[s:s + n] for seq, s in zip(seqs, starts)], device=self.device)
        pos = torch.tensor(starts, device=self.device)[:, None] + torch.arange(n, device=self.device)
        wants = [s + n == seq.num_tokens for seq, s in zip(seqs, starts)]
        want = torch.zeros(len(seqs), n, dtype=torch.bool, device=self.device)
        want[:, -1] = torch.tensor(wants, device=self.device)
        logits = self.runner.forward(tokens, pos, self._slots(seqs), want)
        for seq in seqs:
            seq.num_computed += n
        chosen = [seq for seq, w in zip(seqs, wants) if w]
        if not chosen:
            return []
        next_ids = sample_rows(logits, [s.params for s in chosen], [s.generator for s in chosen])
        for seq, token in zip(chosen, next_ids):
            self.scheduler.append(seq, token)
        return chosen

    def _slots(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """Cache rows of a batch; None when they are rows 0..B-1 in order (then the cache is sliced, not gathered)."""
        slots = [s.slot for s in seqs]
        if slots == list(range(len(slots))):
            return None
        return torch.tensor(slots, device=self.device)

