"""Speculative decoding: which drafts (`SpeculativeConfig`), how a verified row accepts them (`accept`), and what a
request reports (`SpecStats`).

A decoding sequence holds a draft of up to k tokens; the next step feeds its newest token and the draft (k + 1
positions) in one forward, and `accept` keeps the longest prefix the model agrees with plus one token of the
model's own, so each step yields 1..k+1 tokens. Greedy: exactly plain greedy decoding. Sampling: the standard rule
(Leviathan et al. 2023, Chen et al. 2023): draft token x is kept with probability min(1, p(x)/q(x)), a rejection
draws from the normalised residual max(p - q, 0), so every token has the model's distribution p; deterministic
drafts (n-gram, suffix) have q = one-hot.

>>> parse_speculative("ngram:4")
SpeculativeConfig(method='ngram', num_speculative_tokens=4, prompt_lookup_min=3, prompt_lookup_max=4, \
suffix_decoding_max_cached_requests=0, suffix_decoding_max_spec_factor=1.0, suffix_decoding_min_token_prob=0.1, \
suffix_decoding_max_tree_depth=24)
>>> parse_speculative({"method": "mtp", "num_speculative_tokens": 3}).num_speculative_tokens
3
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .sampling import SamplingParams, greedy_tokens, probabilities

__all__ = ["SpeculativeConfig", "parse_speculative", "SpecStats", "accept", "accept_greedy", "METHODS",
           "MAX_SPECULATIVE_TOKENS"]

METHODS = ("mtp", "ngram", "suffix")
MAX_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class SpeculativeConfig:
    """vLLM's `--speculative-config` fields: `method`, `num_speculative_tokens` (k), n-gram's
    `prompt_lookup_min/max` (the n-gram lengths matched), suffix decoding's `max_cached_requests` (how many earlier
    requests' outputs it also searches; 0: the sequence's own tokens only), `max_spec_factor` (a draft is at most
    this times the matched suffix's length), `min_token_prob` (a draft stops at a token fewer than this share of the
    matches continue with) and `max_tree_depth` (the longest suffix matched)."""
    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int = 3  # shorter matches are mostly chance: on the CPU they cost more than they win
    prompt_lookup_max: int = 4
    suffix_decoding_max_cached_requests: int = 0
    suffix_decoding_max_spec_factor: float = 1.0
    suffix_decoding_min_token_prob: float = 0.1
    suffix_decoding_max_tree_depth: int = 24

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"speculative method '{self.method}' is not available (available: {', '.join(METHODS)})")
        checks = [("num_speculative_tokens", 1, MAX_SPECULATIVE_TOKENS), ("prompt_lookup_min", 1, 64),
                  ("prompt_lookup_max", self.prompt_lookup_min, 64),
                  ("suffix_decoding_max_cached_requests", 0, 10 ** 6), ("suffix_decoding_max_tree_depth", 1, 1024)]
        for name, low, high in checks:
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                raise ConfigError(f"speculative '{name}' must be an integer in [{low}, {high}], got {value!r}")
        numbers = (("suffix_decoding_max_spec_factor", 0.0, 64.0), ("suffix_decoding_min_token_prob", 0.0, 1.0))
        for name, low, high in numbers:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high):
                raise ConfigError(f"speculative '{name}' must be a number in [{low}, {high}], got {value!r}")


def parse_speculative(spec: str | dict | SpeculativeConfig | None) -> SpeculativeConfig | None:
    """"mtp:3", "ngram:4", "suffix:8", a dict or JSON object with vLLM's field names, a config, or None (off)."""
    if spec is None or isinstance(spec, SpeculativeConfig):
        return spec
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ConfigError(f"speculative config is not valid JSON: {e}") from None
    if isinstance(spec, str):
        method, _, k = spec.partition(":")
        if not k.isdigit():
            raise ConfigError(f"speculative '{spec}' must be METHOD:K with K the number of draft tokens "
                              f"(e.g. ngram:4; methods: {', '.join(METHODS)})")
        return SpeculativeConfig(method, int(k))
    if not isinstance(spec, dict):
        raise ConfigError(f"speculative config must be a string or an object, got {type(spec).__name__}")
    known = {f.name for f in fields(SpeculativeConfig)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"speculative config has unknown field(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    for name in ("method", "num_speculative_tokens"):
        if name not in spec:
            raise ConfigError(f"speculative config needs '{name}'")
    return SpeculativeConfig(**spec)


@dataclass
class SpecStats:
    """One request's (or a server's) speculation counts, as vLLM's `vllm:spec_decode_*` counters define them: a
    draft is one verified row with at least one draft token; `accepted_per_pos[i]` counts drafts whose token i was
    accepted."""
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verified row: 1 (the model's own) + accepted drafts per draft (vLLM's mean acceptance
        length)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    def record(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        self.num_drafts += 1
        self.num_draft_tokens += drafted
        self.num_accepted_tokens += accepted
        if len(self.accepted_per_pos) < drafted:
            self.accepted_per_pos += [0] * (drafted - len(self.accepted_per_pos))
        for i in range(accepted):
            self.accepted_per_pos[i] += 1

    def as_dict(self) -> dict[str, Any]:
        rates = [round(n / self.num_drafts, 4) if self.num_drafts else 0.0 for n in self.accepted_per_pos]
        return dict(num_drafts=self.num_drafts, num_draft_tokens=self.num_draft_tokens,
                    num_accepted_tokens=self.num_accepted_tokens, accepted_per_pos=list(self.accepted_per_pos),
                    acceptance_per_pos=rates, mean_accepted_length=round(self.mean_accepted_length, 4))


def accept_greedy(draft: list[int], target: list[int]) -> list[int]:
    """Greedy verification: the draft's prefix that equals the model's argmax `target` (len(draft) + 1 tokens),
    then the model's next token.

    >>> accept_greedy([5, 6, 7], [5, 6, 2, 9])
    [5, 6, 2]
    """
    out = []
    for token, want in zip(draft, target):
        if token != want:
            break
        out.append(token)
    return out + [target[len(out)]]


def accept(logits: Tensor, draft: list[int], draft_probs: Tensor | None, params: SamplingParams,
           generator: torch.Generator | None) -> list[int]:
    """The tokens one verified row yields: logits [len(draft) + 1, V] of the fed positions (newest token, then the
    draft), draft_probs [len(draft), V] the draft's distribution q (None: deterministic drafts, q one-hot). Returns
    the accepted prefix of the draft and one more token (the correction, or the bonus when all were accepted)."""
    if params.greedy:
        return accept_greedy(draft, greedy_tokens(logits).tolist())
    p = probabilities(logits, params)
    out = []
    for i, token in enumerate(draft):
        q_token = 1.0 if draft_probs is None else float(draft_probs[i, token])
        u = float(torch.rand((), generator=generator, device=generator.device if generator else None))
        if u * q_token < float(p[i, token]):  # kept with probability min(1, p/q)
            out.append(token)
            continue
        if draft_probs is None:
            residual = p[i].clone()
            residual[token] = 0.0
        else:
            residual = (p[i] - draft_probs[i].to(p.dtype)).clamp(min=0.0)
        if float(residual.sum()) <= 0.0:  # p == q: a rejection had probability 0; keep the rule total anyway
            residual = p[i]
        return out + [int(torch.multinomial(residual, 1, generator=generator))]
    return out + [int(torch.multinomial(p[len(draft)], 1, generator=generator))]
