"""One request as the scheduler sees it: its tokens, how many are in the cache, its slot, and why it finished.
What the user sees of it (text, stop strings, timing) is its `OutputStream` (output.py)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from .sampling import SamplingParams

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

    @property
    def done(self) -> bool:
        return self.status is Status.FINISHED
