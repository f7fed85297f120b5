"""The engine core: a runner and a scheduler, long-lived (caches allocated once, grown when a call needs more).
Each `step()` asks the scheduler for a plan, runs it on the runner as one [B, S] forward (decode rows and prompt
chunks together, shorter rows padded), samples where a row's fed tokens reach its newest token, and returns the
sequences that sampled. `hd.LLM` and the server both drive one."""
from __future__ import annotations

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
        self.driver: str | None = None  # who steps it from another thread (a server), if anyone

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
        """One step of the plan as one [B, S] forward: each row feeds its next tokens (rows shorter than the
        longest are padded with pos = -1); rows whose tokens reach their newest token get a logit row and
        sample. Returns the sequences that sampled a token (or finished by sampling EOS)."""
        plan = self.scheduler.schedule()
        if not plan:
            return []
        seqs = [seq for seq, _ in plan]
        width = max(n for _, n in plan)
        tokens, pos, want = [], [], []
        for seq, n in plan:
            start = seq.num_computed
            pad = width - n
            tokens.append(seq.token_ids[start:start + n] + [0] * pad)
            pos.append(list(range(start, start + n)) + [-1] * pad)
            samples = start + n == seq.num_tokens  # its tokens reach the newest one: sample after them
            want.append([False] * (n - 1) + [samples] + [False] * pad)
        logits = self.runner.forward(torch.tensor(tokens, device=self.device), torch.tensor(pos, device=self.device),
                                     self._slots(seqs), torch.tensor(want, device=self.device))
        chosen = [seq for seq, row in zip(seqs, want) if any(row)]
        for seq, n in plan:
            seq.num_computed += n
        if chosen:
            next_ids = sample_rows(logits, [s.params for s in chosen], [s.generator for s in chosen])
            for seq, token in zip(chosen, next_ids):
                self.scheduler.append(seq, token)
        self.steps += 1
        return chosen

    def _slots(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """Cache rows of a batch; None when they are rows 0..B-1 in order (then the cache is sliced, not gathered)."""
        slots = [s.slot for s in seqs]
        if slots == list(range(len(slots))):
            return None
        return torch.tensor(slots, device=self.device)

