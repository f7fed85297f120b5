"""OpenAI request validation and response shapes: every rejection is an `APIError` with the OpenAI envelope."""
from __future__ import annotations

import json
import math
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..engine.request import check_template_kwargs, normalize_messages
from ..engine.sampling import SamplingParams
from ..errors import RequestError

__all__ = ["APIError", "GenerateRequest", "parse_chat", "parse_completion", "chunk", "completion_body",
           "usage", "error_body"]

# The field policy (vLLM's): a field that does not change the output is accepted and ignored; an unknown field
# is ignored with a logged warning; a field that would change the output and is not implemented is a 400 naming
# it, unless it carries its neutral value (the value that means "off").
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options",
          "ignore_eos", "request_timeout", "skip_special_tokens", "frequency_penalty", "presence_penalty",
          "repetition_penalty", "logit_bias", "min_tokens"}  # implemented; NEUTRAL's names are handled there
CHAT = COMMON | {"messages", "max_completion_tokens", "chat_template_kwargs"}
COMPLETION = COMMON | {"prompt"}
NO_EFFECT = {"user", "store", "metadata", "service_tier", "parallel_tool_calls", "prompt_cache_key",
             "safety_identifier", "prediction", "priority", "spaces_between_special_tokens"}
NEUTRAL: dict[str, tuple[Any, ...]] = {  # not implemented: accepted only with one of these values
    "tools": (None, []), "functions": (None, []), "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "suffix": (None, ""), "audio": (None,), "modalities": (None, ["text"]),
    "min_p": (None, 0, 0.0),
    "reasoning_effort": (None,), "web_search_options": (None,), "guided_json": (None,), "guided_regex": (None,),
    "guided_choice": (None,), "guided_grammar": (None,), "structured_outputs": (None,),
    "include_stop_str_in_output": (None, False), "stop_token_ids": (None, []), "bad_words": (None, []),
    "truncate_prompt_tokens": (None,), "prompt_logprobs": (None, 0), "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0), "add_generation_prompt": (None, True), "continue_final_message": (None, False),
    "echo": (None, False), "logprobs": (None, False, 0), "top_logprobs": (None, 0), "n": (None, 1),
    "best_of": (None, 1),
}
log = logging.getLogger("hyperdecode.serve")
_warned: set[str] = set()


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type
        self.code = code if code is not None else str(status)
        self.headers = headers or {}


def error_body(e: APIError) -> dict[str, Any]:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


@dataclass
class GenerateRequest:
    kind: str  # "chat" or "completion"
    model: str
    prompt: Any  # chat: the messages; completion: a string or token ids
    params: SamplingParams
    stream: bool
    include_usage: bool
    continuous_usage: bool
    timeout_s: float | None
    template_kwargs: dict[str, Any] | None = None


def bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


def check_type(body: dict, name: str, types: tuple, what: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise bad(name, f"'{name}' must be {what}, got {type(value).__name__}")
    return value


def given(body: dict, name: str, default: Any = None) -> Any:
    """A field's value; JSON null counts as not given."""
    value = body.get(name)
    return default if value is None else value


def parse_common(body: Any, allowed: set[str], kind: str) -> tuple[dict, SamplingParams]:
    """The fields chat and completions share. Sampling parameters are checked by `SamplingParams` (the same rules
    as `hd.LLM`); a `RequestError` from there becomes a 400 naming the field (app.py)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = check_type(body, "model", (str,), "a string")
    if not model:
        raise bad("model", "'model' is required")
    check_type(body, "n", (int,), "an integer")
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in neutral:
            raise bad(name, f"'{name}' is not supported with value {_short(body[name])} (only "
                            f"{' or '.join(_short(v) for v in neutral)})")
    for name in sorted(set(body) - allowed - NO_EFFECT - set(NEUTRAL)):
        if name not in _warned:  # once per field name: a client repeats it on every call
            _warned.add(name)
            log.warning("ignoring the unknown request field '%s'", name)
    for name in ("stream", "skip_special_tokens"):
        check_type(body, name, (bool,), "a boolean")
    options = check_type(body, "stream_options", (dict,), "an object") or {}
    if set(options) - {"include_usage", "continuous_usage_stats"}:
        raise bad("stream_options", f"unsupported stream option '{sorted(set(options))[0]}'")
    if options and not body.get("stream"):
        raise bad("stream_options", "'stream_options' is only allowed with stream=true")
    timeout = check_type(body, "request_timeout", (int, float), "a number of seconds")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise bad("request_timeout", f"'request_timeout' must be a positive number of seconds, got {timeout!r}")
    max_tokens_field = "max_tokens"
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        max_tokens_field = "max_completion_tokens"
    try:
        params = SamplingParams(max_tokens=body.get(max_tokens_field), temperature=given(body, "temperature", 1.0),
                                top_p=given(body, "top_p", 1.0), top_k=given(body, "top_k", 0),
                                seed=body.get("seed"), stop=body.get("stop"),
                                ignore_eos=given(body, "ignore_eos", False),
                                frequency_penalty=given(body, "frequency_penalty", 0.0),
                                presence_penalty=given(body, "presence_penalty", 0.0),
                                repetition_penalty=given(body, "repetition_penalty", 1.0),
                                logit_bias=token_keys(body.get("logit_bias")), min_tokens=given(body, "min_tokens", 0))
    except RequestError as e:
        if e.param == "max_tokens" and max_tokens_field != "max_tokens":
            raise RequestError(str(e).replace("'max_tokens'", f"'{max_tokens_field}'"), param=max_tokens_field) from None
        raise
    meta = {"model": model, "stream": bool(body.get("stream", False)),
            "include_usage": bool(options.get("include_usage")),
            "continuous_usage": bool(options.get("continuous_usage_stats")), "timeout_s": timeout}
    return meta, params


def token_keys(bias: Any) -> Any:
    """OpenAI's logit_bias has token ids as string keys ("50256": -100); SamplingParams checks the values."""
    if not isinstance(bias, dict):
        return bias
    try:
        return {int(k): v for k, v in bias.items()}
    except (TypeError, ValueError):
        raise RequestError("'logit_bias' keys must be token ids", param="logit_bias") from None


def parse_chat(body: Any) -> GenerateRequest:
    meta, params = parse_common(body, CHAT, "chat")
    template_kwargs = check_template_kwargs(body.get("chat_template_kwargs"))
    return GenerateRequest("chat", prompt=normalize_messages(body.get("messages")), params=params,
                           template_kwargs=template_kwargs, **meta)


def parse_completion(body: Any) -> GenerateRequest:
    meta, params = parse_common(body, COMPLETION, "completion")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    return GenerateRequest("completion", prompt=prompt, params=params, **meta)


def new_id(kind: str, request_id: str | None) -> str:
    return request_id or f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, spec: dict | None = None, cached_tokens: int = 0
          ) -> dict[str, Any]:
    """OpenAI's usage object, with `prompt_tokens_details.cached_tokens` (the prefix cache's hits); with
    speculative decoding on, the request's draft counts ride along as the extension field `spec_decode`
    (num_drafts, num_draft_tokens, num_accepted_tokens, accepted_per_pos, acceptance_per_pos,
    mean_accepted_length)."""
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens,
                           "prompt_tokens_details": {"cached_tokens": cached_tokens}}
    if spec is not None:
        out["spec_decode"] = spec
    return out


def chunk(kind: str, rid: str, model: str, created: int, text: str | None, finish: str | None,
          first: bool, usage_: dict | None = None) -> dict[str, Any]:
    """One SSE chunk; `text=None` with `finish=None` and a usage dict is the final usage-only chunk."""
    if text is None and finish is None:
        choices = []
    elif kind == "chat":
        delta = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
    out = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
           "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        out["usage"] = usage_
    return out


def completion_body(kind: str, rid: str, model: str, text: str, finish: str, prompt_tokens: int,
                    completion_tokens: int, spec: dict | None = None, cached_tokens: int = 0) -> dict[str, Any]:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens, spec, cached_tokens)}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
