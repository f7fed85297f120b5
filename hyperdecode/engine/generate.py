"""The generation loop: one batched prefill (prompts right-padded), then one batched decode step per token."""
from __future__ import annotations

from typing import Iterator

import torch

from ..model.llama import Transformer
from .sampling import sample
from .sequence import Sequence

__all__ = ["run"]


@torch.inference_mode()
def run(model: Transformer, seqs: list[Sequence]) -> Iterator[list[str]]:
    """Generates for all sequences at once; after each step yields the new final text of every sequence."""
    device = model.embed_tokens.weight.device
    params = seqs[0].params
    lens = [len(s.prompt_ids) for s in seqs]
    limit = model.cfg.max_position_embeddings
    model.setup_caches(len(seqs), min(max(lens) + params.max_tokens, limit))
    generators = []
    for s in seqs:
        g = torch.Generator(device=device)
        g.manual_seed(s.params.seed) if s.params.seed is not None else g.seed()
        generators.append(g)

    tokens = torch.zeros(len(seqs), max(lens), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, :lens[i]] = torch.tensor(s.prompt_ids)
    tokens = tokens.to(device)
    pos = torch.arange(max(lens), device=device).expand(len(seqs), -1)
    h = model(tokens, pos)
    h = h[torch.arange(len(seqs), device=device), torch.tensor(lens, device=device) - 1]
    while True:
        next_ids = sample(model.logits(h), params, generators).tolist()
        yield [s.append(t, limit) if not s.done else "" for s, t in zip(seqs, next_ids)]
        if all(s.done for s in seqs):
            return
        tokens = torch.tensor(next_ids, device=device)[:, None]
        pos = torch.tensor([s.next_pos for s in seqs], device=device)[:, None]
        h = model(tokens, pos)[:, 0]
