"""Model runners: how the scheduler gets logits for a prefill or a batched decode step. The reference runner calls
the PyTorch model; the mega runner (engine/mega/runner.py) runs decode steps in the megakernel."""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ReferenceRunner"]


class ReferenceRunner:
    def __init__(self, model: nn.Module):
        self.model = model

    def setup(self, max_batch: int, max_seq: int) -> None:
        self.model.setup_caches(max_batch, max_seq)

    def prefill(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> Tensor:
        """tokens, pos: [1, S] into cache row `slots` -> logits of the last position [1, vocab]."""
        return self.model.logits(self.model(tokens, pos, slots=slots)[:, -1])

    def decode(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> Tensor:
        """tokens, pos: [B, 1] -> logits [B, vocab]."""
        return self.model.logits(self.model(tokens, pos, slots=slots)[:, 0])
