"""`backend="graph"`: the reference forward's decode step captured into one CUDA graph per batch-size bucket
(1, 2, 4, ... up to the batch limit), replayed with the step's tokens, positions and cache rows copied into the
graph's static inputs. Prefill runs eagerly. Padded rows of a bucket write to a spare cache row, never a live one.
It is the baseline the megakernel must beat, and the fallback for models the megakernel cannot compile.
Shapes: S = 1 steps (decode rows, one-token prompt chunks) replay a graph; with speculative decoding, steps of up to
1 + k tokens per row (verification) replay a graph of width 1 + k per bucket (shorter rows padded at a spare cache
position); longer chunks run on the reference.

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
    FAST_SHAPES = "[B, 1] and [B, <= verify_width]"

    def __init__(self, model: nn.Module, capture: bool = True):
        super().__init__(model)
        self.capture = capture
        if capture and self.device.type != "cuda":
            raise ConfigError("backend 'graph' captures CUDA graphs and needs a CUDA device; use 'reference' here")
        self.steps: dict[tuple[int, int], Callable[[], tuple[Tensor, Tensor]]] = {}  # by (bucket, width)
        self.pool = None

    def setup(self, max_batch: int, max_seq: int) -> None:
        # + the spare row that padded rows write to, + the spare position that a verify row's padding writes to
        super().setup(max_batch + 1, max_seq + 1)
        caches = [id(t) for t in self.model.cache_tensors().values()]
        if caches != getattr(self, "captured_with", None):
            self.steps, self.pool = {}, None  # graphs hold the old caches' addresses: capture again
            self.captured_with = caches
        self.spare = self.model.max_batch - 1
        self.spare_pos = self.model.max_seq - 1
        self.buckets = buckets(max_batch)

    def _static_step(self, bucket: int, width: int) -> Callable[[], tuple[Tensor, Tensor]]:
        """Static inputs of one (bucket, width) and a function that runs (or replays) its step into static outputs:
        the final-norm hidden states [bucket, width, hidden] and the logits [bucket, width, vocab]."""
        tokens = torch.zeros(bucket, width, dtype=torch.long, device=self.device)
        pos = torch.zeros(bucket, width, dtype=torch.long, device=self.device)
        slots = torch.full((bucket,), self.spare, dtype=torch.long, device=self.device)

        def forward() -> tuple[Tensor, Tensor]:
            with static_shapes():
                hidden = self.model(tokens, pos, slots=slots)
                return hidden, self.model.logits(hidden)

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

            def step() -> tuple[Tensor, Tensor]:
                graph.replay()
                return out
        step.inputs = (tokens, pos, slots)
        return step

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, want: Tensor) -> Tensor:
        S = tokens.shape[1]
        if S == 1:
            width = 1
        elif S <= self.verify_width:  # a verify step (or a short prompt chunk): the verify graph, padded
            width = self.verify_width
        else:
            return self.reference(tokens, pos, slots, want)
        hidden, logits = self.run(tokens, pos, slots, width)
        self.hidden = hidden.clone() if self.keep_hidden else None  # the static output is overwritten next step
        return logits[want]

    def run(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, width: int) -> tuple[Tensor, Tensor]:
        """The captured step of this width for tokens, pos [B, S <= width] (pos -1: padding, written at the spare
        position) -> hidden [B, S, hidden] (a view of the static output) and logits [B, S, vocab]."""
        B, S = tokens.shape
        bucket = next(b for b in self.buckets if b >= B)
        if (bucket, width) not in self.steps:
            self.steps[bucket, width] = self._static_step(bucket, width)
        step = self.steps[bucket, width]
        tok_in, pos_in, slot_in = step.inputs
        tok_in[:B, :S], pos_in[:B, :S] = tokens, pos.masked_fill(pos < 0, self.spare_pos)
        tok_in[:B, S:], pos_in[:B, S:] = 0, self.spare_pos
        slot_in[:B] = torch.arange(B, device=self.device) if slots is None else slots
        tok_in[B:], pos_in[B:], slot_in[B:] = 0, 0, self.spare
        hidden, logits = step()
        return hidden[:B, :S], logits[:B, :S].clone()
