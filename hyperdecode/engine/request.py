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
import json
from typing import Any

from ..errors import RequestError
from ..model.tokenizer import Tokenizer
from .output import OutputStream
from .sampling import SamplingParams
from .sequence import Sequence

__all__ = ["InputProcessor", "normalize_messages", "lone_surrogate", "ROLES", "Prompt"]

ROLES = ("system", "user", "assistant", "developer", "tool")
Prompt = str | list[int]


def lone_surrogate(value: Any, where: str) -> str | None:
    """The path of the first string in a JSON value that is not valid Unicode (a lone surrogate such as "\\ud800",
    which JSON allows but UTF-8 cannot encode), else None.

    >>> lone_surrogate({"messages": [{"content": "ok"}, {"content": "\\ud800"}]}, "body")
    'body.messages[1].content'
    """
    if isinstance(value, str):
        return None if value.isascii() or _encodes(value) else where
    if isinstance(value, dict):
        items = ((f"{where}.{_printable(k)}" if where else _printable(k), k, v) for k, v in value.items())
        for path, key, item in items:
            found = lone_surrogate(key, path) or lone_surrogate(item, path)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = lone_surrogate(item, f"{where}[{i}]")
            if found:
                return found
    return None


def _printable(key: Any) -> str:
    """A key as a path element that UTF-8 can always encode (lone surrogates escaped as \\udXXX)."""
    text = str(key)
    return text if _encodes(text) else json.dumps(text)[1:-1]


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_unicode(value: Any, param: str) -> None:
    found = lone_surrogate(value, param)
    if found:
        raise RequestError(f"'{found}' is not valid Unicode (it has a lone surrogate)", param=found)


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
        require_unicode(content, f"messages[{i}].content")
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

    def chat_prompt(self, messages: Any, template_kwargs: dict[str, Any] | None = None) -> list[int]:
        """The chat template applied to the messages (extra template variables in `template_kwargs`, as vLLM's
        chat_template_kwargs), tokenized."""
        from jinja2.exceptions import TemplateError
        tok = self.require_tokenizer()
        if tok.chat_template is None:
            raise RequestError("this model has no chat template; send a plain prompt (completions)",
                               param="messages")
        kwargs = {"add_generation_prompt": True, **check_template_kwargs(template_kwargs)}
        messages = normalize_messages(messages)
        try:
            text = tok.apply_chat_template(messages, **kwargs)
        except TemplateError as e:  # the template's own raise_exception("..."), or the sandbox's refusal
            raise RequestError(f"the chat template refused the messages: {e}", param="messages") from None
        except (TypeError, ValueError, OverflowError) as e:  # a variable of the wrong kind for the template
            param = "chat_template_kwargs" if template_kwargs else "messages"
            raise RequestError(f"the chat template failed on the request's {param}: {type(e).__name__}: {e}",
                               param=param) from None
        return tok.encode(text, add_special_tokens=False)

    def check_prompt(self, prompt: Any) -> None:
        """The prompt checks that need no tokenizer (a server runs them before admission): a non-empty string or
        a non-empty list of token ids in the vocabulary."""
        if isinstance(prompt, str) and prompt:
            require_unicode(prompt, "prompt")
            return
        if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                             for t in prompt)):
            raise RequestError("'prompt' must be a non-empty string or a non-empty list of token ids", param="prompt")
        if not all(0 <= t < self.vocab_size for t in prompt):
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")

    def prompt_ids(self, prompt: Any) -> list[int]:
        """Token ids of a text prompt or a list of ids, checked: non-empty, in the vocabulary."""
        self.check_prompt(prompt)
        if isinstance(prompt, str):
            return self.require_tokenizer().encode(prompt)
        return list(prompt)

    def process(self, prompt: Any = None, params: SamplingParams | None = None, messages: Any = None,
                default_max_tokens: int | None = None,
                template_kwargs: dict[str, Any] | None = None) -> tuple[Sequence, OutputStream]:
        """A sequence for `prompt` (or chat `messages`); max_tokens unset means `default_max_tokens` (None: the
        rest of the context), capped by the context; an explicit max_tokens beyond the context is an error."""
        params = params or SamplingParams()
        if messages is not None:
            ids = self.chat_prompt(messages, template_kwargs)
        else:
            ids = self.prompt_ids(prompt)
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


RESERVED_TEMPLATE_VARIABLES = ("messages", "bos_token", "eos_token")


def check_template_kwargs(kwargs: Any) -> dict[str, Any]:
    """Extra chat-template variables: an object whose keys are not the ones the template gets from us."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise RequestError("'chat_template_kwargs' must be an object of template variables",
                           param="chat_template_kwargs")
    taken = sorted(set(kwargs) & set(RESERVED_TEMPLATE_VARIABLES))
    if taken:
        raise RequestError(f"'chat_template_kwargs' may not set '{taken[0]}'", param="chat_template_kwargs")
    return kwargs
