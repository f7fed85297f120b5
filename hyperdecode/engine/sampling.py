"""Sampling parameters and the token sampler (greedy, temperature, top-k, top-p, per-sequence seeds)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SamplingParams", "sample", "sample_rows"]


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            ("max_tokens", isinstance(self.max_tokens, int) and self.max_tokens >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0 (0 = off)"),
            ("stop", self.stop is None or all(isinstance(s, str) and s for s in self.stop), "non-empty strings"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"sampling parameter '{name}' must be {want}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def sample(logits: Tensor, params: SamplingParams, generators: list[torch.Generator]) -> Tensor:
    """logits: [B, V] float -> token ids [B]; row i draws from generators[i], so a row's draws don't depend on
    which other rows share its batch."""
    if params.greedy:
        return logits.argmax(-1)
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def sample_rows(logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """logits: [B, V]; row i is sampled with its own params[i] and generators[i] (rows of different requests)."""
    out = logits.argmax(-1).tolist()
    for i, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            out[i] = int(sample(logits[i:i + 1], p, [g])[0])
    return out
