"""Grammar-constrained decoding (structured output) on llguidance: a JSON schema, any JSON object, a regular
expression, a choice of strings or a Lark grammar becomes a per-sequence matcher that masks every token the
grammar does not allow before the sampler sees the logits, and follows each sampled token.

llguidance (Microsoft's, MIT; what vLLM and SGLang offer next to xgrammar) over xgrammar: a small self-contained
wheel with no torch or Triton pin of its own, a mask in tens of microseconds per token on the CPU, and JSON
schemas, regexes and Lark grammars through one entry.

>>> spec = {"choice": ["yes", "no"]}
>>> check_spec(spec)
{'choice': ['yes', 'no']}
"""
from __future__ import annotations

import json
import threading
from typing import Any

import torch
from torch import Tensor

from ..errors import RequestError
from ..model.tokenizer import Tokenizer

__all__ = ["Constraint", "GrammarCompiler", "check_spec", "SPEC_KINDS"]

SPEC_KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
COMPACT_JSON = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def check_spec(spec: Any) -> dict[str, Any]:
    """A constraint as one key of SPEC_KINDS: {"json_schema": {...}}, {"json_object": True}, {"regex": "..."},
    {"choice": ["a", "b"]} or {"grammar": "<Lark>"}."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPEC_KINDS:
        raise RequestError(f"a structured-output constraint must be one of {', '.join(SPEC_KINDS)}",
                           param="structured_outputs")
    kind, value = next(iter(spec.items()))
    valid = {"json_schema": isinstance(value, (dict, bool)), "json_object": value is True,
             "regex": isinstance(value, str) and value, "grammar": isinstance(value, str) and value,
             "choice": isinstance(value, list) and value and all(isinstance(c, str) for c in value)}
    if not valid[kind]:
        raise RequestError(f"structured output '{kind}' has the wrong kind of value", param="structured_outputs")
    return spec


def grammar_text(spec: dict[str, Any]) -> str:
    """The llguidance grammar a constraint names (JSON with compact separators: a sampled output cannot wander
    off into whitespace)."""
    from llguidance import LLMatcher, grammar_from
    kind, value = next(iter(spec.items()))
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=COMPACT_JSON)
    if kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(value, defaults=COMPACT_JSON)
    if kind == "choice":
        return grammar_from("choice", json.dumps(value))
    return grammar_from("regex" if kind == "regex" else "lark", value)


class GrammarCompiler:
    """Builds matchers for one tokenizer (its token table is read once, ~1 s, then shared)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: list[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = list(eos_ids)
        self._lock = threading.Lock()
        self._table = None

    def table(self):
        with self._lock:
            if self._table is None:
                from llguidance import LLTokenizer
                self._table = LLTokenizer(self.tokenizer.tok.to_str(), n_vocab=self.vocab_size,
                                          eos_token=self.eos_ids or None)
            return self._table

    def constraint(self, spec: dict[str, Any]) -> "Constraint":
        """A fresh matcher for one sequence; a grammar llguidance refuses is a RequestError naming why."""
        from llguidance import LLMatcher
        try:
            grammar = grammar_text(check_spec(spec))
        except (ValueError, TypeError) as e:
            raise RequestError(f"the structured-output grammar is invalid: {e}", param="structured_outputs") from None
        message = LLMatcher.validate_grammar(grammar, self.table())  # "" when it is valid
        if message:
            raise RequestError(f"the structured-output grammar is invalid: {message}", param="structured_outputs")
        matcher = LLMatcher(self.table(), grammar)
        if matcher.is_error():
            raise RequestError(f"the structured-output grammar is invalid: {matcher.get_error()}",
                               param="structured_outputs")
        return Constraint(matcher, self.vocab_size)


class Constraint:
    """One sequence's matcher: `mask(logits)` before sampling, `accept(token)` after; `done` once the grammar
    has ended (the sequence then stops)."""

    def __init__(self, matcher: Any, vocab_size: int):
        import llguidance.torch as lt
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.bitmask = lt.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: Tensor) -> Tensor:
        """logits [1, V] -> the same with every token the grammar forbids at -inf (a copy, on the CPU)."""
        import llguidance.torch as lt
        lt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        out = logits.float().cpu().clone()
        lt.apply_token_bitmask_inplace(out, self.bitmask)
        return out.to(logits.device)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()

    def allows_end(self) -> bool:
        return self.matcher.is_accepting()

