"""The engine core: a runner and a scheduler, long-lived (caches allocated once, grown when a call needs more).
Each `step()` asks the scheduler for a plan, runs it on the runner as one [B, S] forward (decode rows and prompt
chunks together, shorter rows padded), samples where a row's fed tokens reach its newest token, and returns the
sequences that sampled. `hd.LLM` and the server both drive one.

A fault is the fault of one sequence: when a forward fails, each row of the plan is run again alone (rows write
the same cache positions, so a retry is exact) and only the rows that still fail end, with finish_reason "error"
and `seq.error` naming the exception; a failure while seeding or sampling ends that sequence alone. The others
go on as if nothing happened."""
from __future__ import annotations

import torch

from .runner import ReferenceRunner
from .sampling import sample
from .scheduler import Scheduler, StepPlan
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
        """Queues a sequence (built by `InputProcessor`); it is admitted when a slot is free. A seed the generator
        refuses raises here, before the sequence holds anything."""
        generator = torch.Generator(device=self.device)
        if seq.params.seed is not None:
            generator.manual_seed(seq.params.seed)
        else:
            generator.seed()
        seq.generator = generator
        self.scheduler.add(seq)

    def finish(self, seq: Sequence, reason: str, num_output: int | None = None) -> None:
        """Ends a sequence now (a stop string: keep its first `num_output` tokens; or an abort) and frees its slot."""
        if num_output is not None:
            del seq.token_ids[len(seq.prompt_ids) + num_output:]
        self.scheduler.finish(seq, reason)

    def fail(self, seq: Sequence, error: BaseException) -> None:
        """Ends one sequence for a fault of its own (finish_reason "error"); frees its slot."""
        seq.error = f"{type(error).__name__}: {error}"
        self.scheduler.finish(seq, "error")

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """One step of the plan as one [B, S] forward: each row feeds its next tokens (rows shorter than the
        longest are padded with pos = -1); rows whose tokens reach their newest token get a logit row and
        sample. Returns the sequences that sampled a token, finished, or failed (finish_reason "error")."""
        plan = self.scheduler.schedule()
        if not plan:
            return []
        self.steps += 1
        try:
            return self._run(plan)
        except Exception as e:
            if len(plan) == 1:
                self.fail(plan[0][0], e)
                return [plan[0][0]]
        out = []
        for row in plan:  # isolate the failing row(s): each row alone
            try:
                out += self._run([row])
            except Exception as e:
                self.fail(row[0], e)
                out.append(row[0])
        return out

    def _run(self, plan: StepPlan) -> list[Sequence]:
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
        greedy = logits.argmax(-1).tolist() if chosen else []  # a device fault surfaces here, before any state moves
        self.runner.confirm()
        for seq, n in plan:
            seq.num_computed += n
        for i, seq in enumerate(chosen):
            try:
                token = greedy[i] if seq.params.greedy else int(sample(logits[i:i + 1], seq.params,
                                                                       [seq.generator])[0])
                self.scheduler.append(seq, token)
            except Exception as e:
                self.fail(seq, e)
        return chosen

    def _slots(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """Cache rows of a batch; None when they are rows 0..B-1 in order (then the cache is sliced, not gathered)."""
        slots = [s.slot for s in seqs]
        if slots == list(range(len(slots))):
            return None
        return torch.tensor(slots, device=self.device)
