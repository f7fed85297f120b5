"""One request being generated: its tokens, its incremental text (with stop strings held back) and its timing."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..model.tokenizer import Tokenizer
from .sampling import SamplingParams

__all__ = ["Sequence", "Generation", "GenerationStats"]


@dataclass
class GenerationStats:
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    e2e_s: float


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: GenerationStats


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    tokenizer: Tokenizer | None
    eos_ids: frozenset[int] = frozenset()
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    start: float = field(default_factory=time.perf_counter)
    first_token_at: float = 0.0
    end: float = 0.0
    slot: int = -1
    generator: torch.Generator | None = None
    _prefix: int = 0
    _read: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def next_pos(self) -> int:
        """Position of the newest token, which the next decode step feeds."""
        return len(self.prompt_ids) + len(self.output_ids) - 1

    def append(self, token: int, context_limit: int) -> str:
        """Adds a sampled token; returns the text that became final (safe to show) with it."""
        now = time.perf_counter()
        if not self.output_ids:
            self.first_token_at = now
        if token in self.eos_ids and not self.params.ignore_eos:
            self.finish(now, "stop")
            return self.flush()
        self.output_ids.append(token)
        if self.tokenizer is not None:
            self._detokenize()
        if not self.done and (len(self.output_ids) >= self.params.max_tokens
                              or len(self.prompt_ids) + len(self.output_ids) >= context_limit):
            self.finish(now, "length")
        return self.flush() if self.done else self._release()

    def _detokenize(self) -> None:
        ids = self.output_ids
        prefix_text = self.tokenizer.decode(ids[self._prefix:self._read], skip_special_tokens=True)
        new_text = self.tokenizer.decode(ids[self._prefix:], skip_special_tokens=True)
        if new_text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return
        old_len = len(self.text)
        self.text += new_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(ids)
        for s in self.params.stop or ():
            i = self.text.find(s, max(0, old_len - len(s) + 1))
            if i >= 0:
                self.text = self.text[:i]
                self.finish(time.perf_counter(), "stop")

    def _release(self) -> str:
        hold = 0
        for s in self.params.stop or ():  # keep back a tail that may still grow into a stop string
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return self._take(len(self.text) - hold)

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        piece, self.emitted = self.text[self.emitted:upto], max(self.emitted, upto)
        return piece

    def finish(self, now: float, reason: str) -> None:
        self.finish_reason, self.end = reason, now

    def result(self) -> Generation:
        n = len(self.output_ids)
        ttft = self.first_token_at - self.start
        e2e = self.end - self.start
        tpot = (e2e - ttft) / (n - 1) if n > 1 else 0.0
        return Generation(self.text, list(self.output_ids), self.finish_reason or "length",
                          GenerationStats(len(self.prompt_ids), n, ttft, tpot,
                                          1.0 / tpot if tpot > 0 else (n / e2e if e2e > 0 else 0.0), e2e))
