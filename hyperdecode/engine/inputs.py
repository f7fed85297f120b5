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
from dataclasses import dataclass, field
from typing import Any

from ..errors import RequestError
from ..model.tokenizer import Tokenizer
from .chat import check_tools, hermes_messages, normalize_messages, require_unicode, template_tool_support, \
    with_tools_listed
from .output import OutputStream
from .sampling import SamplingParams
from .sequence import Sequence
from .structured import GrammarCompiler

__all__ = ["InputProcessor", "Prompt", "Chat", "check_chat"]

Prompt = str | list[int]


@dataclass(frozen=True)
class Chat:
    """Chat messages checked once (`check_chat`): the normalized messages, the tools offered, extra template
    variables."""
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)


def check_chat(messages: Any, tools: Any = None, template_kwargs: Any = None) -> Chat:
    """The one place chat inputs are checked (hd.LLM.chat and the server's chat and tokenize routes): a
    RequestError names the field."""
    return Chat(normalize_messages(messages), check_tools(tools), check_template_kwargs(template_kwargs))


class InputProcessor:
    """Tokenizes and checks requests for one model and context limit (`max_model_len` positions per sequence)."""

    def __init__(self, tokenizer: Tokenizer | None, vocab_size: int, eos_ids: list[int], max_model_len: int,
                 grammars: GrammarCompiler | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = frozenset(eos_ids)
        self.max_model_len = max_model_len
        self._grammars = grammars

    def with_limit(self, max_model_len: int) -> "InputProcessor":
        return InputProcessor(self.tokenizer, self.vocab_size, list(self.eos_ids), max_model_len, self.grammars)

    @property
    def grammars(self) -> GrammarCompiler | None:
        """Structured output's matchers for this tokenizer (built on first use; None without a tokenizer)."""
        if self._grammars is None and self.tokenizer is not None:
            self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size, sorted(self.eos_ids))
        return self._grammars

    def require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RequestError("this model has no tokenizer (no tokenizer.json); pass token ids", param="prompt")
        return self.tokenizer

    def chat_prompt(self, chat: Chat | Any) -> list[int]:
        """The chat template applied to the messages of `chat` (extra template variables as vLLM's
        chat_template_kwargs), tokenized; its tools go to a template that renders them, else into the messages
        (chat.py's Hermes form). Raw messages are checked first (`check_chat`)."""
        from jinja2.exceptions import TemplateError
        chat = chat if isinstance(chat, Chat) else check_chat(chat)
        tok = self.require_tokenizer()
        if tok.chat_template is None:
            raise RequestError("this model has no chat template; send a plain prompt (completions)",
                               param="messages")
        kwargs = {"add_generation_prompt": True, **chat.template_kwargs}
        messages, tools = chat.messages, chat.tools
        lists_tools, renders_calls = template_tool_support(tok.chat_template)
        if not renders_calls:
            messages = hermes_messages(messages)
        if tools and lists_tools:
            kwargs["tools"] = tools
        elif tools:
            messages = with_tools_listed(messages, tools, how_to_call=not renders_calls)
        try:
            text = tok.apply_chat_template(messages, **kwargs)
        except TemplateError as e:  # the template's own raise_exception("..."), or the sandbox's refusal
            raise RequestError(f"the chat template refused the messages: {e}", param="messages") from None
        except (TypeError, ValueError, OverflowError) as e:  # a variable of the wrong kind for the template
            param = "chat_template_kwargs" if chat.template_kwargs else "messages"
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

    def process(self, prompt: Any = None, params: SamplingParams | None = None, messages: Chat | Any = None,
                default_max_tokens: int | None = None) -> tuple[Sequence, OutputStream]:
        """A sequence for `prompt` or chat `messages` (a `Chat`, or raw messages); max_tokens unset means
        `default_max_tokens` (None: the rest of the context), capped by the context; an explicit max_tokens beyond
        the context is an error. A `params.structured` grammar gets its matcher here."""
        params = params or SamplingParams()
        if messages is not None:
            ids = self.chat_prompt(messages)
        else:
            ids = self.prompt_ids(prompt)
        where = "messages" if messages is not None else "prompt"
        outside = sorted(t for t in params.logit_bias or {} if t >= self.vocab_size)
        if outside:
            raise RequestError(f"'logit_bias' names token ids outside the vocabulary [0, {self.vocab_size}): "
                               f"{outside[:5]}", param="logit_bias")
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
        if params.structured is not None:
            if self.grammars is None:
                raise RequestError("structured output needs the model's tokenizer", param="response_format")
            seq.constraint = self.grammars.constraint(params.structured)
        return seq, OutputStream(seq, self.tokenizer)


    def samples(self, seq: Sequence, stream: OutputStream, n: int) -> list[tuple[Sequence, OutputStream]]:
        """The n samples of one processed request (OpenAI's `n`): it, then n - 1 siblings that copy its prompt, get
        their own seed (seed + j) and grammar matcher, and wait for its prompt to be cached (`Sequence.after`)."""
        out = [(seq, stream)]
        for j in range(1, n):
            seed = None if seq.params.seed is None else seq.params.seed + j
            sibling = Sequence(list(seq.prompt_ids), dataclasses.replace(seq.params, seed=seed), seq.eos_ids)
            sibling.after = seq
            if sibling.params.structured is not None:
                sibling.constraint = self.grammars.constraint(sibling.params.structured)
            out.append((sibling, OutputStream(sibling, stream.tokenizer)))
        return out


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
