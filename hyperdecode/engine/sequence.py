"""One request as the scheduler sees it: its tokens, how many are in the cache, its slot, and why it finished.
What the user sees of it (text, stop strings, timing) is its `OutputStream` (output.py)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from .sampling import SamplingParams
from .speculative import SpecStats

__all__ = ["Sequence", "Status"]


class Status(enum.Enum):
    WAITING = "waiting"  # not yet given a cache slot
    RUNNING = "running"  # has a slot; prefilling while num_computed < the prompt's length, then decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """prompt_ids + output_ids = token_ids; the first `num_computed` of them are in the cache. The next step
    feeds tokens from `num_computed` on: a chunk of the prompt, or the newest sampled token."""
    prompt_ids: list[int]
    params: SamplingParams
    eos_ids: frozenset[int] = frozenset()
    token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    slot: int = -1
    status: Status = Status.WAITING
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    error: str | None = None  # why it failed, when finish_reason is "error"
    num_cached: int = 0  # prompt tokens found in the prefix cache (not fed)
    reuse: tuple[int, int, int] | None = None  # (source row, own row, n): the prefix the core copies before a step
    after: "Sequence | None" = None  # a sibling (n > 1) waits for this one's prompt to be cached, then reuses it
    constraint: Any = None  # a grammar matcher (structured.py) the output must follow
    logprobs: list = field(default_factory=list)  # per output token: (token, logprob, top alternatives)
    prompt_logprobs: list = field(default_factory=list)  # per prompt token after the first, the same
    # speculative decoding: the draft the next step verifies after the newest token, its distribution q [len, V]
    # (None: deterministic), the drafter's own state, and the counts the request reports
    draft: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    spec_state: Any = None
    spec: SpecStats | None = None
    kv: Any = None  # a KvTransfer (kv_connector.py) when the cache crosses instances: held for a peer, or pulled

    @property
    def loading(self) -> bool:
        """A consumer's row is being filled from a peer: the sequence sits out the steps."""
        return self.kv is not None and self.kv.loading

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids):]

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def prefilling(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def remaining(self) -> int:
        """Tokens not yet in the cache (the rest of the prompt, or 1 while decoding)."""
        return self.num_tokens - self.num_computed

    def feed(self, n: int) -> list[int]:
        """The n tokens the next step feeds from `num_computed` on: prompt tokens, or the newest token and then the
        draft."""
        start = self.num_computed
        if start + n <= self.num_tokens:
            return self.token_ids[start:start + n]
        return (self.token_ids[start:] + self.draft)[:n]

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED
