"""The one request path: a prompt (text or token ids) or chat messages, plus sampling parameters, become a
`Sequence` and its `OutputStream`, under one set of rules for `hd.LLM` and the server. A rule that fails raises
`RequestError` naming the field (the server answers 400 with the same `param`).

>>> from hyperdecode.model.tokenizer import Tokenizer
>>> inputs = InputProcessor(Tokenizer.byte_level(), vocab_size=259, eos_ids=[], max_model_len=16)
>>> seq, _ = inputs.process("hello", SamplingParams(max_tokens=4))
>>> len(seq.prompt_ids), seq.params.max_tokens
(5, 4)
>>> inputs.process("hello", SamplingParams(max_tokens=20))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
hyperdecode.errors.RequestError: This model's maximum context length is 16 tokens. However, you requested 25 ...
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RequestError
from ..model.tokenizer import Tokenizer
from .output import OutputStream
from .sampling import SamplingParams
from .sequence import Sequence

__all__ = ["InputProcessor", "normalize_messages", "ROLES", "Prompt"]

ROLES = ("system", "user", "assistant", "developer", "tool")
Prompt = str | list[int]


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """Chat messages as {"role", "content"} with string content (a list of text parts is joined)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}] needs a 'role' in {ROLES}", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise RequestError("only text content parts are supported", param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    return out


class InputProcessor:
    """Tokenizes and checks requests for one model and context limit (`max_model_len` positions per sequence)."""

    def __init__(self, tokenizer: Tokenizer | None, vocab_size: int, eos_ids: list[int], max_model_len: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = frozenset(eos_ids)
        self.max_model_len = max_model_len

    def with_limit(self, max_model_len: int) -> "InputProcessor":
        return InputProcessor(self.tokenizer, self.vocab_size, list(self.eos_ids), max_model_len)

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RequestError("this model has no tokenizer (no tokenizer.json); pass token ids", param="prompt")
        return self.tokenizer

    def chat_prompt(self, messages: Any) -> list[int]:
        tok = self.require_tokenizer()
        text = tok.apply_chat_template(normalize_messages(messages), add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)

    def prompt_ids(self, prompt: Any) -> list[int]:
        """Token ids of a text prompt or a list of ids, checked: non-empty, in the vocabulary, within the context."""
        if isinstance(prompt, str) and prompt:
            ids = self.require_tokenizer().encode(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in prompt):
            ids = list(prompt)
        else:
            raise RequestError("'prompt' must be a non-empty string or a non-empty list of token ids", param="prompt")
        if not all(0 <= t < self.vocab_size for t in ids):
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
        return ids

    def process(self, prompt: Any = None, params: SamplingParams | None = None, messages: Any = None,
                default_max_tokens: int | None = None) -> tuple[Sequence, OutputStream]:
        """A sequence for `prompt` (or chat `messages`); max_tokens unset means `default_max_tokens` (None: the
        rest of the context), capped by the context; an explicit max_tokens beyond the context is an error."""
        params = params or SamplingParams()
        ids = self.chat_prompt(messages) if messages is not None else self.prompt_ids(prompt)
        where = "messages" if messages is not None else "prompt"
        room = self.max_model_len - len(ids)
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = max(room, 1) if default_max_tokens is None else min(default_max_tokens, max(room, 1))
        if room < 1 or max_tokens > room:
            raise RequestError(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the {where}, {max_tokens} "
                               f"in the completion). Please reduce the length of the {where} or completion.",
                               param=where)
        seq = Sequence(ids, dataclasses.replace(params, max_tokens=max_tokens), self.eos_ids)
        return seq, OutputStream(seq, self.tokenizer)
