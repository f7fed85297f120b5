"""Continuous batching over cache slots: a sequence is prefilled into a free slot, then joins the shared decode
steps until it finishes. The offline `LLM` calls and the server both run on it."""
from __future__ import annotations

from typing import Iterator

import torch

from .runner import ReferenceRunner
from .sampling import sample_rows
from .sequence import Sequence

__all__ = ["Scheduler", "run"]


class Scheduler:
    def __init__(self, runner: ReferenceRunner, max_batch: int, max_seq: int):
        self.runner, self.max_seq = runner, max_seq
        self.device = runner.model.embed_tokens.weight.device
        runner.setup(max_batch, max_seq)
        self.free = list(range(max_batch - 1, -1, -1))
        self.running: list[Sequence] = []

    @property
    def has_room(self) -> bool:
        return bool(self.free)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> str:
        """Prefills `seq` into a free slot and samples its first token; returns the text that became final."""
        seq.slot = self.free.pop()
        seq.generator = torch.Generator(device=self.device)
        seq.generator.manual_seed(seq.params.seed) if seq.params.seed is not None else seq.generator.seed()
        n = len(seq.prompt_ids)
        tokens = torch.tensor([seq.prompt_ids], device=self.device)
        pos = torch.arange(n, device=self.device)[None]
        logits = self.runner.prefill(tokens, pos, self._slots([seq]))
        self.running.append(seq)
        piece = seq.append(sample_rows(logits, [seq.params], [seq.generator])[0], self.max_seq)
        if seq.done:
            self.remove(seq)
        return piece

    @torch.inference_mode()
    def step(self) -> list[tuple[Sequence, str]]:
        """One decode step for every running sequence; finished ones leave the batch."""
        if not self.running:
            return []
        seqs = list(self.running)
        tokens = torch.tensor([[s.output_ids[-1]] for s in seqs], device=self.device)
        pos = torch.tensor([[s.next_pos] for s in seqs], device=self.device)
        logits = self.runner.decode(tokens, pos, self._slots(seqs))
        next_ids = sample_rows(logits, [s.params for s in seqs], [s.generator for s in seqs])
        out = [(s, s.append(t, self.max_seq)) for s, t in zip(seqs, next_ids)]
        for s in seqs:
            if s.done:
                self.remove(s)
        return out

    def _slots(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """Cache rows of a batch; None when they are rows 0..B-1 in order (then the cache is sliced, not gathered)."""
        slots = [s.slot for s in seqs]
        return None if slots == list(range(len(slots))) else torch.tensor(slots, device=self.device)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
            self.free.append(seq.slot)


def run(runner: ReferenceRunner, seqs: list[Sequence], context_limit: int) -> Iterator[list[str]]:
    """Generates all `seqs` together; after each step yields the new final text of every sequence."""
    longest = max(len(s.prompt_ids) + s.params.max_tokens for s in seqs)
    scheduler = Scheduler(runner, len(seqs), min(longest, context_limit))
    yield [scheduler.add(s) for s in seqs]
    while scheduler.running:
        pieces = dict((id(s), p) for s, p in scheduler.step())
        yield [pieces.get(id(s), "") for s in seqs]
