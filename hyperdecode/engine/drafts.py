"""Draft sources for speculative decoding. Each drafter fills `seq.draft` (and `seq.draft_probs`, the draft's
distribution q, for a model drafter that samples) for the decoding sequences the engine core hands it.

- `NgramDrafter` (prompt lookup): the longest n-gram (prompt_lookup_max down to prompt_lookup_min) ending the
  sequence that also occurs earlier in its prompt + output; the draft is what followed its latest occurrence.
- `SuffixDrafter` (suffix decoding, as Arctic Inference's): every earlier occurrence of the longest suffix of the
  sequence (up to `max_tree_depth` tokens), in its own tokens and, optionally, in earlier requests' outputs; the
  draft walks their continuations, each token the most frequent next token among the occurrences still agreeing,
  stopping when that token's share falls below `min_token_prob`, and is at most `max_spec_factor` times the matched
  length (a one-token match drafts one token: short matches are mostly chance).

Both are deterministic (q = one-hot) and work for every family. The MTP drafter is mtp.py.

>>> from hyperdecode.engine.sampling import SamplingParams
>>> seq = Sequence([1, 2, 3, 4, 9, 1, 2, 3], SamplingParams())
>>> NgramDrafter(3).propose([seq], [3]); seq.draft
[4, 9, 1]
"""
from __future__ import annotations

import collections

from torch import nn

from .mtp import MtpDrafter
from .sequence import Sequence
from .speculative import SpeculativeConfig

__all__ = ["TokenIndex", "NgramDrafter", "SuffixDrafter", "longest_match", "make_drafter"]

MAX_OCCURRENCES = 64  # the latest occurrences of a suffix a drafter looks at (bounds its work per step)


class TokenIndex:
    """Where each token occurs in one growing token list (append-only)."""

    def __init__(self, tokens: list[int] | None = None):
        self.tokens: list[int] = []
        self.where: dict[int, list[int]] = collections.defaultdict(list)
        self.extend(tokens or [])

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.where[token].append(len(self.tokens))
            self.tokens.append(token)

    def follow(self, token_ids: list[int]) -> None:
        """Catches up with a list this index mirrors (which only grows while its sequence runs)."""
        self.extend(token_ids[len(self.tokens):])


def longest_match(index: TokenIndex, tail: list[int], max_len: int) -> tuple[int, list[int]]:
    """The longest suffix of `tail` (at most `max_len` tokens) that occurs in `index` followed by at least one
    token: (its length, the end positions of its latest occurrences, newest first); (0, []) when none."""
    if not tail:
        return 0, []
    n = len(index.tokens)
    ends = [e for e in reversed(index.where.get(tail[-1], ())) if e + 1 < n][:MAX_OCCURRENCES]
    if not ends:
        return 0, []
    length = 1
    while length < min(max_len, len(tail)):
        longer = [e for e in ends if e - length >= 0 and index.tokens[e - length] == tail[-1 - length]]
        if not longer:
            break
        ends = longer
        length += 1
    return length, ends


def _own_index(seq: Sequence) -> TokenIndex:
    if seq.spec_state is None:
        seq.spec_state = TokenIndex()
    seq.spec_state.follow(seq.token_ids)
    return seq.spec_state


class NgramDrafter:
    needs_hidden = False

    def __init__(self, k: int, prompt_lookup_min: int = 3, prompt_lookup_max: int = 4):
        self.k = k
        self.min_n = prompt_lookup_min
        self.max_n = prompt_lookup_max

    def propose(self, seqs: list[Sequence], limits: list[int]) -> None:
        """Sets each sequence's draft (at most its limit tokens; [] when no n-gram of its tail recurs)."""
        for seq, limit in zip(seqs, limits):
            index = _own_index(seq)
            length, ends = longest_match(index, seq.token_ids, self.max_n)
            seq.draft_probs = None
            if length < self.min_n or limit <= 0:
                seq.draft = []
                continue
            start = ends[0] + 1
            seq.draft = index.tokens[start:start + min(self.k, limit)]

    def retire(self, seq: Sequence) -> None:
        seq.spec_state = None


class SuffixDrafter:
    needs_hidden = False

    def __init__(self, k: int, max_cached_requests: int = 0, max_spec_factor: float = 1.0,
                 min_token_prob: float = 0.1, max_tree_depth: int = 24):
        self.k = k
        self.max_cached = max_cached_requests
        self.spec_factor = max_spec_factor
        self.min_share = min_token_prob
        self.max_depth = max_tree_depth
        self.earlier: collections.deque[TokenIndex] = collections.deque()  # earlier requests' outputs, oldest first

    def propose(self, seqs: list[Sequence], limits: list[int]) -> None:
        for seq, limit in zip(seqs, limits):
            seq.draft_probs = None
            seq.draft = self._walk(_own_index(seq), seq.token_ids, min(self.k, limit)) if limit > 0 else []

    def _walk(self, own: TokenIndex, tail: list[int], k: int) -> list[int]:
        best, found = 0, []
        for index in [own, *reversed(self.earlier)]:
            length, ends = longest_match(index, tail, self.max_depth)
            if length > best:
                best, found = length, [(index, e) for e in ends]
            elif length == best and length:
                found += [(index, e) for e in ends]
        draft = []
        k = min(k, int(self.spec_factor * best))
        live = found[:MAX_OCCURRENCES]
        while live and len(draft) < k:
            depth = len(draft) + 1
            counts: collections.Counter[int] = collections.Counter()
            first: dict[int, int] = {}
            for i, (index, e) in enumerate(live):
                if e + depth < len(index.tokens):
                    token = index.tokens[e + depth]
                    counts[token] += 1
                    first.setdefault(token, i)
            if not counts:
                break
            token = max(counts, key=lambda t: (counts[t], -first[t]))  # ties: the newest occurrence's
            if counts[token] < self.min_share * len(live):
                break
            draft.append(token)
            live = [(index, e) for index, e in live
                    if e + depth < len(index.tokens) and index.tokens[e + depth] == token]
        return draft

    def retire(self, seq: Sequence) -> None:
        """A finished sequence's output joins the earlier outputs (the oldest leave beyond the limit); once."""
        if seq.spec_state is None:
            return
        seq.spec_state = None
        if self.max_cached and seq.output_ids:
            self.earlier.append(TokenIndex(seq.output_ids))
            while len(self.earlier) > self.max_cached:
                self.earlier.popleft()


def make_drafter(config: SpeculativeConfig, model: nn.Module) -> NgramDrafter | SuffixDrafter | MtpDrafter:
    """The draft source a config names (the MTP drafter needs the model's MTP layer)."""
    k = config.num_speculative_tokens
    if config.method == "ngram":
        return NgramDrafter(k, config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "suffix":
        return SuffixDrafter(k, config.suffix_decoding_max_cached_requests, config.suffix_decoding_max_spec_factor,
                             config.suffix_decoding_min_token_prob, config.suffix_decoding_max_tree_depth)
    return MtpDrafter(model, k)
