"""The MTP drafter (GLM-5 / DeepSeek-V3): the checkpoint's multi-token-prediction layer, with a cache of its own,
chained k times per step.

The MTP layer at position p reads the main model's hidden state h_p and the token after p, and predicts the token
two after p. After each step it catches up over the positions the step put in the cache (true hidden states, true
next tokens), which gives the first draft token at the sequence's newest position; each further draft token feeds
the layer its own output and the previous draft token one position on (DeepSeek-V3's chained MTP). The chained
positions' cache entries are provisional: the next catch-up overwrites them. The layer runs on the reference path
in every backend (one decoder layer per draft token, outside the verify step that the fast backends run).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .sampling import probabilities
from .sequence import Sequence

__all__ = ["MtpDrafter"]


class MtpDrafter:
    needs_hidden = True

    def __init__(self, model: nn.Module, k: int):
        if getattr(model, "mtp", None) is None:
            raise ConfigError("speculative method 'mtp' needs a checkpoint with an MTP layer "
                              "(num_nextn_predict_layers > 0 and its weights); use 'ngram' or 'suffix' for this model")
        self.model = model
        self.k = k
        self.last: dict[Sequence, Tensor] = {}  # the MTP layer's output at each sequence's newest cached position

    def observe(self, rows: list[tuple[int, Sequence, int, int]], hidden: Tensor) -> None:
        """One MTP forward over every row's newly cached positions: (plan row in `hidden` [B, S, hidden], sequence,
        first position, positions kept). The token after position p is the sequence's token p + 1."""
        if not rows:
            return
        width = max(kept for _, _, _, kept in rows)
        device = hidden.device
        feed = torch.zeros(len(rows), width, hidden.shape[-1], dtype=hidden.dtype, device=device)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        pos = torch.full((len(rows), width), -1, dtype=torch.long)
        for b, (i, seq, start, kept) in enumerate(rows):
            feed[b, :kept] = hidden[i, :kept]
            tokens[b, :kept] = torch.tensor(seq.token_ids[start + 1:start + kept + 1])
            pos[b, :kept] = torch.arange(start, start + kept)
        slots = torch.tensor([seq.slot for _, seq, _, _ in rows], device=device)
        x = self.model.mtp_forward(feed, tokens.to(device), pos.to(device), slots, use_cache=True)
        for b, (_, seq, _, kept) in enumerate(rows):
            self.last[seq] = x[b, kept - 1]

    def propose(self, seqs: list[Sequence], limits: list[int]) -> None:
        """Up to `limit` chained draft tokens per sequence: greedy rows take the MTP layer's argmax, sampling rows
        draw from its distribution under their own sampling parameters (kept in `draft_probs` for acceptance)."""
        active = []
        for seq, limit in zip(seqs, limits):
            seq.draft, seq.draft_probs = [], None
            if limit > 0 and seq in self.last:
                active.append((seq, limit))
        probs: dict[Sequence, list[Tensor]] = {seq: [] for seq, _ in active}
        x = torch.stack([self.last[seq] for seq, _ in active]) if active else None
        for j in range(self.k):
            if not active:
                break
            if j > 0:  # one position on: the layer's own output and the previous draft token
                device = x.device
                tokens = torch.tensor([[seq.draft[-1]] for seq, _ in active], device=device)
                pos = torch.tensor([[seq.num_computed - 1 + j] for seq, _ in active], device=device)
                slots = torch.tensor([seq.slot for seq, _ in active], device=device)
                x = self.model.mtp_forward(x[:, None], tokens, pos, slots, use_cache=True)[:, 0]
            logits = self.model.mtp_head(x)
            for b, (seq, _) in enumerate(active):
                if seq.params.greedy:
                    seq.draft.append(int(logits[b].argmax()))
                else:
                    q = probabilities(logits[b:b + 1], seq.params)[0]
                    probs[seq].append(q)
                    seq.draft.append(int(torch.multinomial(q, 1, generator=seq.generator)))
            keep = [b for b, (_, limit) in enumerate(active) if limit > j + 1]
            active = [active[b] for b in keep]
            x = x[keep] if keep else None
        for seq, q in probs.items():
            seq.draft_probs = torch.stack(q) if q else None

    def retire(self, seq: Sequence) -> None:
        self.last.pop(seq, None)
