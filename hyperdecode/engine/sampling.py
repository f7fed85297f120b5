"""Sampling parameters (one set of validation rules for `hd.LLM` and the server), the logits processors they
name (repetition / frequency / presence penalties, logit bias, min_tokens: `process_logits`) and the token sampler
(greedy, temperature, top-k, top-p, per-sequence seeds)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import RequestError
from .structured import check_spec

__all__ = ["SamplingParams", "sample", "probabilities", "distribution", "greedy_tokens", "process_logits",
           "token_logprobs", "GREEDY_BELOW", "MAX_LOGPROBS"]

GREEDY_BELOW = 1e-5  # a temperature below this is greedy (vLLM's _SAMPLING_EPS): 1/t would overflow
MAX_STOP_STRINGS = 4  # OpenAI's limit
SEED_RANGE = (-(2 ** 63), 2 ** 64)  # what torch.Generator.manual_seed takes
MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit
FLOAT_MAX = torch.finfo(torch.float32).max  # +inf logits become this: equal, finite, still the most likely


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class SamplingParams:
    """max_tokens None: the API's default (`hd.LLM`: 64, chat completions: the rest of the context, completions:
    16), never more than the context allows. temperature 0 (or below 1e-5) is greedy; top_k 0 or -1 is off."""
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    ignore_eos: bool = False
    repetition_penalty: float = 1.0  # > 0; tokens of the prompt and output: positive logits / r, negative * r
    frequency_penalty: float = 0.0  # [-2, 2]; minus f x the token's count in the output
    presence_penalty: float = 0.0  # [-2, 2]; minus p when the token is in the output
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit, [-100, 100]
    min_tokens: int = 0  # end-of-sequence tokens are masked until this many tokens are out
    logprobs: int | None = None  # each output token's log-probability and this many top alternatives (0..20)
    prompt_logprobs: int | None = None  # the same for each prompt token after the first (no prefix-cache reuse)
    structured: dict[str, Any] | None = None  # a grammar the output must match (structured.py's check_spec)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            ("max_tokens", self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
             "an integer, at least 1"),
            ("temperature", _is_number(self.temperature) and 0 <= self.temperature <= 2, "a number in [0, 2]"),
            ("top_p", _is_number(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("top_k", _is_int(self.top_k) and self.top_k >= -1, "an integer: -1 or 0 (off) or positive"),
            ("seed", self.seed is None or (_is_int(self.seed) and SEED_RANGE[0] <= self.seed < SEED_RANGE[1]),
             "an integer in [-2**63, 2**64)"),
            ("stop", self.stop is None or (isinstance(self.stop, list) and len(self.stop) <= MAX_STOP_STRINGS
                                           and all(isinstance(s, str) and s for s in self.stop)),
             f"a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty strings"),
            ("ignore_eos", isinstance(self.ignore_eos, bool), "a boolean"),
            ("repetition_penalty", _is_number(self.repetition_penalty) and self.repetition_penalty > 0,
             "a positive number"),
            ("frequency_penalty", _is_number(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             "a number in [-2, 2]"),
            ("presence_penalty", _is_number(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             "a number in [-2, 2]"),
            ("logit_bias", self.logit_bias is None or (isinstance(self.logit_bias, dict) and all(
                _is_int(k) and k >= 0 and _is_number(v) and -100 <= v <= 100 for k, v in self.logit_bias.items())),
             "an object mapping token ids to numbers in [-100, 100]"),
            ("min_tokens", _is_int(self.min_tokens) and self.min_tokens >= 0, "an integer, at least 0"),
            ("logprobs", self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
             f"an integer in [0, {MAX_LOGPROBS}]"),
            ("prompt_logprobs", self.prompt_logprobs is None or (_is_int(self.prompt_logprobs)
                                                                 and 0 <= self.prompt_logprobs <= MAX_LOGPROBS),
             f"an integer in [0, {MAX_LOGPROBS}]"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise RequestError(f"'{name}' must be {want}, got {getattr(self, name)!r}", param=name)
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)
        self.top_k = max(self.top_k, 0)
        if self.structured is not None:
            check_spec(self.structured)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    @property
    def processes_logits(self) -> bool:
        """Whether `process_logits` changes anything for these parameters."""
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
                or bool(self.logit_bias) or self.min_tokens > 0)


def process_logits(logits: Tensor, params: SamplingParams, prompt: list[int], outputs: list[list[int]],
                   eos_ids: frozenset[int]) -> Tensor:
    """logits [n, V] of n positions whose outputs so far are outputs[i] (each after the same prompt) -> the
    logits the sampler sees: repetition penalty over prompt and output tokens (vLLM's rule), then frequency and
    presence penalties over output tokens (OpenAI's), the logit bias, and EOS masked before min_tokens.

    >>> p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    >>> process_logits(torch.tensor([[1.0, -1.0, 3.0, 0.5]]), p, [0], [[1, 1]], frozenset()).tolist()
    [[0.5, -3.25, 3.0, 0.5]]
    """
    out = logits.float().clone()
    V = out.shape[-1]
    for i, output in enumerate(outputs):
        row = out[i]
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(sorted({t for t in prompt + output if 0 <= t < V}), dtype=torch.long)
            if len(seen):
                values = row[seen]
                row[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                        values * params.repetition_penalty)
        if output and (params.frequency_penalty or params.presence_penalty):
            counts = torch.bincount(torch.tensor(output, dtype=torch.long).clamp(0, V - 1), minlength=V).float()
            row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
        for token, bias in (params.logit_bias or {}).items():
            if token < V:
                row[token] += bias
        if len(output) < params.min_tokens:
            for token in eos_ids:
                if token < V:
                    row[token] = float("-inf")
    return out


def token_logprobs(logits: Tensor, tokens: list[int], top: int) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """logits [n, V] of the positions that chose `tokens` [n] -> (token, its log-probability, the `top` most likely
    tokens with theirs) per position: log_softmax of the model's own logits (vLLM's default "raw_logprobs": before
    penalties, bias, temperature or a grammar).

    >>> [(t, round(lp, 4)) for t, lp, _ in token_logprobs(torch.tensor([[0.0, 0.0]]), [1], 0)]
    [(1, -0.6931)]
    """
    if not tokens:
        return []
    lp = torch.log_softmax(logits[:len(tokens)].float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(tokens, device=lp.device).view(-1, 1))[:, 0].tolist()
    best = torch.topk(lp, min(top, lp.shape[-1]), dim=-1) if top else None
    out = []
    for j, token in enumerate(tokens):
        alternatives = list(zip(best.indices[j].tolist(), best.values[j].tolist())) if best is not None else []
        out.append((token, chosen[j], alternatives))
    return out


def probabilities(logits: Tensor, params: SamplingParams) -> Tensor:
    """logits: [B, V] float -> the distribution a non-greedy `params` samples from (temperature, then top-k, then
    top-p), [B, V] float32. Speculative decoding accepts drafts against this same distribution. Every valid
    request gets a distribution: the top token always stays whatever top_p (5e-324 is 0 in float32), +inf logits
    (a tiny repetition_penalty) share the mass, and a row with no finite logit at all is one-hot on token 0
    (`distribution`).

    >>> probabilities(torch.tensor([[1.0, 2.0, 0.5]]), SamplingParams(temperature=1.0, top_p=5e-324)).tolist()
    [[0.0, 1.0, 0.0]]
    """
    logits = torch.nan_to_num(logits.float() / params.temperature, nan=float("-inf"), posinf=FLOAT_MAX)
    empty = ~torch.isfinite(logits).any(-1)  # every token masked: one-hot below, never a NaN softmax
    logits = logits.masked_fill(empty[:, None], 0.0)
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens ranked above it already reach top_p; the top token always stays
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        drop[..., 0] = False
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        sorted_probs = sorted_probs / sorted_probs.sum(-1, keepdim=True)  # the nucleus, renormalised
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    if bool(empty.any()):
        probs[empty] = torch.nn.functional.one_hot(torch.zeros_like(empty[empty], dtype=torch.long),
                                                   probs.shape[-1]).to(probs.dtype)
    return distribution(probs, logits)


def distribution(probs: Tensor, logits: Tensor) -> Tensor:
    """`probs` with every row that is not a distribution (NaN, or nothing left) made one-hot on its best logit."""
    broken = ~torch.isfinite(probs).all(-1) | ~(probs.sum(-1) > 0)
    if bool(broken.any()):
        best = greedy_tokens(logits[broken])
        probs = probs.clone()
        probs[broken] = torch.nn.functional.one_hot(best, probs.shape[-1]).to(probs.dtype)
    return probs


def greedy_tokens(logits: Tensor) -> Tensor:
    """The best token of each row [B, V]; NaN counts as -inf, so the choice is always defined."""
    return torch.nan_to_num(logits.float(), nan=float("-inf")).argmax(-1)


def sample(logits: Tensor, params: SamplingParams, generators: list[torch.Generator]) -> Tensor:
    """logits: [B, V] float -> token ids [B]; row i draws from generators[i], so a row's draws don't depend on
    which other rows share its batch."""
    if params.greedy:
        return greedy_tokens(logits)
    probs = probabilities(logits, params)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])
