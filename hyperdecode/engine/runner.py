"""Model runners: run one step's shape on the model and return the logits the scheduler wants. Every runner has
one entry, `forward(tokens [B, S], pos [B, S], slots, want) -> logits [wanted, vocab]`, used for steps that mix
prompt chunks and decode rows (shorter rows right-padded with pos = -1), plain decode (S = 1) and speculative
verification (S = k + 1; `rollback` then clears the rejected positions); `reuse` gives a row a prefix another
row (or it) already holds (prefix caching); `settle` and `received` bracket a row's cache leaving for, or
arriving from, another instance (disaggregation). The reference runner runs any shape;
`graph` and `mega` run S = 1 and verify steps themselves and hand other shapes to the reference (`FAST_SHAPES` says
which)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ReferenceRunner"]


class ReferenceRunner:
    FAST_SHAPES = "any [B, S]"

    @classmethod
    def build(cls, model: nn.Module, **options: object) -> "ReferenceRunner":
        """The runner for `model` from what `hd.LLM` knows of the checkpoint (backends.py); most runners need none."""
        return cls(model)

    @staticmethod
    def check(flag: str = "backend") -> None:
        """Raises a ConfigError naming what this runner needs and this machine lacks (`flag`: what messages call
        the backend); nothing by default."""

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether this runner runs `model`'s family on its device (`auto` measures only those)."""
        return True

    def __init__(self, model: nn.Module):
        self.model = model
        self.keep_hidden = False  # also keep the step's final-norm hidden states in `hidden` (an MTP drafter's input)
        self.hidden: Tensor | None = None  # [B, S, hidden] of the last forward, when keep_hidden
        self.verify_width = 1  # the widest [B, S] step a fast runner should run itself (1 + draft tokens)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def setup(self, max_batch: int, max_seq: int) -> None:
        """Caches for `max_batch` rows of `max_seq` positions (kept when already large enough)."""
        self.model.setup_caches(max_batch, max_seq)

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, want: Tensor) -> Tensor:
        """tokens, pos [B, S] into cache rows `slots` (None: rows 0..B-1) -> float32 logits of the positions where
        `want` [B, S] is true, in row-major order."""
        return self.reference(tokens, pos, slots, want)

    def confirm(self) -> None:
        """Raises if the last forward's device work failed in a way its logits do not show (a runner that does not
        sync per step checks here; the engine calls it once the step's results are on the host)."""

    def rollback(self, row: int, keep: int, end: int) -> None:
        """Cache row `row` keeps its first `keep` positions; positions keep:end (a verify step's rejected drafts)
        are cleared."""
        self.model.keep_cache(row, keep, end)

    def reuse(self, source: int, row: int, n: int) -> None:
        """Prefix caching: cache row `row` starts with row `source`'s first n positions (the same row keeps them),
        the rest cleared."""
        if source == row:
            self.model.keep_cache(row, n)
        else:
            self.model.copy_cache(source, row, n)

    def settle(self, row: int, upto: int) -> None:
        """Makes positions < upto of `row` current in the model's caches (`row_caches`), which a peer is about to
        read (disaggregation); the reference runner writes nowhere else."""

    def received(self, row: int, first: int, last: int) -> None:
        """Positions first:last of `row` were written into the model's caches from outside (a peer's prefill)."""

    def reference(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, want: Tensor) -> Tensor:
        hidden = self.model(tokens, pos, slots=slots)
        self.hidden = hidden if self.keep_hidden else None
        return self.model.logits(hidden[want])
