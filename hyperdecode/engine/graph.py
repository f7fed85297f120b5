"""`backend="graph"`: the reference forward's decode step captured into one CUDA graph per batch-size bucket
(1, 2, 4, ... up to the batch limit), replayed with the step's tokens, positions and cache rows copied into the
graph's static inputs. Prefill runs eagerly. Padded rows of a bucket write to a spare cache row, never a live one.
It is the baseline the megakernel must beat, and the fallback for models the megakernel cannot compile.
Shapes: S = 1 steps (decode rows, one-token prompt chunks) replay a graph; longer chunks run on the reference.

Without a GPU the same static step runs eagerly (`capture=False`): that checks everything but the capture.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..model.static import static_shapes
from .runner import ReferenceRunner

__all__ = ["GraphRunner", "buckets"]


def buckets(max_batch: int) -> list[int]:
    """Batch sizes that get a graph: powers of two below `max_batch`, then `max_batch`.

    >>> buckets(6)
    [1, 2, 4, 6]
    """
    sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
    return sizes + [max_batch]


class GraphRunner(ReferenceRunner):
    FAST_SHAPES = "[B, 1]"

    def __init__(self, model: nn.Module, capture: bool = True):
        super().__init__(model)
        self.capture = capture
        if capture and self.device.type != "cuda":
            raise ConfigError("backend 'graph' captures CUDA graphs and needs a CUDA device; use 'reference' here")
        self.steps: dict[int, Callable[[], Tensor]] = {}
        self.pool = None

    def setup(self, max_batch: int, max_seq: int) -> None:
        super().setup(max_batch + 1, max_seq)  # + the spare row that padded rows write to
        caches = [id(t) for t in self.model.cache_tensors().values()]
        if caches != getattr(self, "captured_with", None):
            self.steps, self.pool = {}, None  # graphs hold the old caches' addresses: capture again
            self.captured_with = caches
        self.spare = self.model.max_batch - 1
        self.buckets = buckets(max_batch)

    def _static_step(self, bucket: int) -> Callable[[], Tensor]:
        """Static inputs of one bucket and a function that runs (or replays) its step into a static output."""
        tokens = torch.zeros(bucket, 1, dtype=torch.long, device=self.device)
        pos = torch.zeros(bucket, 1, dtype=torch.long, device=self.device)
        slots = torch.full((bucket,), self.spare, dtype=torch.long, device=self.device)

        def forward() -> Tensor:
            with static_shapes():
                return self.model.logits(self.model(tokens, pos, slots=slots)[:, 0])

        if not self.capture:
            step = forward
        else:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up (kernel selection, allocator) on the spare row
                    forward()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = forward()
            self.pool = graph.pool()

            def step() -> Tensor:
                graph.replay()
                return out
        step.inputs = (tokens, pos, slots)
        return step

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, want: Tensor) -> Tensor:
        if tokens.shape[1] != 1:
            return self.reference(tokens, pos, slots, want)
        return self.decode(tokens, pos, slots)[want[:, 0]]

    def decode(self, tokens: Tensor, pos: Tensor, slots: Tensor | None) -> Tensor:
        """The captured step for tokens, pos [B, 1] -> logits [B, vocab]."""
        B = tokens.shape[0]
        bucket = next(b for b in self.buckets if b >= B)
        if bucket not in self.steps:
            self.steps[bucket] = self._static_step(bucket)
        step = self.steps[bucket]
        tok_in, pos_in, slot_in = step.inputs
        tok_in[:B], pos_in[:B] = tokens, pos
        slot_in[:B] = torch.arange(B, device=self.device) if slots is None else slots
        tok_in[B:], pos_in[B:], slot_in[B:] = 0, 0, self.spare
        return step()[:B].clone()
