"""OpenAI request validation and response shapes: every rejection is an `APIError` with the OpenAI envelope."""
from __future__ import annotations

import json
import math
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from ..disagg.params import check_kv_params
from ..engine.inputs import Chat, check_chat
from ..engine.sampling import MAX_LOGPROBS, SamplingParams
from ..engine.structured import check_spec
from ..errors import RequestError

__all__ = ["APIError", "GenerateRequest", "parse_chat", "parse_completion", "usage", "error_body", "new_id",
           "structured_of", "tool_choice_of", "forced_tool_schema", "closed", "is_batch", "whole_numbers"]

# The field policy (vLLM's): a field that does not change the output is accepted and ignored; an unknown field
# is ignored with a logged warning; a field that would change the output and is not implemented is a 400 naming
# it, unless it carries its neutral value (the value that means "off").
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options",
          "ignore_eos", "request_timeout", "skip_special_tokens", "frequency_penalty", "presence_penalty",
          "repetition_penalty", "logit_bias", "min_tokens", "n", "logprobs", "response_format", "guided_json",
          "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "kv_transfer_params"}  # implemented
CHAT = COMMON | {"messages", "max_completion_tokens", "chat_template_kwargs", "tools", "tool_choice", "top_logprobs",
                 "parallel_tool_calls"}
COMPLETION = COMMON | {"prompt", "echo"}
NO_EFFECT = {"user", "store", "metadata", "service_tier", "prompt_cache_key",
             "safety_identifier", "prediction", "priority", "spaces_between_special_tokens"}
NEUTRAL: dict[str, tuple[Any, ...]] = {  # not implemented: accepted only with one of these values
    "functions": (None, []), "function_call": (None, "none", "auto"),
    "suffix": (None, ""), "audio": (None,), "modalities": (None, ["text"]),
    "min_p": (None, 0, 0.0),
    "reasoning_effort": (None,), "web_search_options": (None,),
    "include_stop_str_in_output": (None, False), "stop_token_ids": (None, []), "bad_words": (None, []),
    "truncate_prompt_tokens": (None,), "prompt_logprobs": (None,), "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0), "add_generation_prompt": (None, True), "continue_final_message": (None, False),
    "best_of": (None, 1),
}
MAX_N = 16  # parallel samples per prompt
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions' `logprobs`
log = logging.getLogger("hyperdecode.serve")
_warned: set[str] = set()
MAX_WARNED = 256  # distinct unknown names warned about; after that they are ignored quietly (a bounded set)


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
    prompt: Any  # chat: the checked messages, tools and template variables (a `Chat`); completion: text or ids
    params: SamplingParams
    stream: bool
    include_usage: bool
    continuous_usage: bool
    timeout_s: float | None
    n: int = 1  # parallel samples per prompt
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = "none"  # "none", "auto", "required" or the name of the one function to call ({"name": ...})
    logprobs: int | None = None  # top alternatives reported per token (None: no logprobs)
    echo: bool = False  # completions: the prompt comes back before the completion (with its logprobs)
    structured_field: str | None = None  # the field that asked for a grammar (its errors name it)
    parallel_tool_calls: bool = True  # false: at most one tool call per turn
    kv_transfer: str | None = None  # disaggregation: "send" (a prefill for a peer) or "pull" (decode its prefill)
    kv_transfer_params: dict[str, Any] | None = None  # vLLM's, as the request gave them

    @property
    def prompts(self) -> list[Any]:
        """The prompts of the request (completions may batch several: a list of strings or of token-id lists)."""
        if self.kind == "completion" and is_batch(self.prompt):
            return list(self.prompt)
        return [self.prompt]


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


INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "top_k", "logprobs", "top_logprobs",
                  "min_tokens", "max_output_tokens")


def whole_numbers(body: dict) -> dict:
    """The body with whole-number floats in integer fields as integers (`"max_tokens": 4.0` is 4, as the
    pydantic-validated servers, vLLM's among them, take it); anything else is left for the field's own check.

    >>> whole_numbers({"n": 2.0, "max_tokens": 4.5, "temperature": 1.0})
    {'n': 2, 'max_tokens': 4.5, 'temperature': 1.0}
    """
    out = dict(body)
    for name in INTEGER_FIELDS:
        value = out.get(name)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            out[name] = int(value)
    return out


def parse_common(body: Any, allowed: set[str], kind: str) -> tuple[dict, SamplingParams]:
    """The fields chat and completions share. Sampling parameters are checked by `SamplingParams` (the same rules
    as `hd.LLM`); a `RequestError` from there becomes a 400 naming the field (app.py)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = check_type(body, "model", (str,), "a string")
    if not model:
        raise bad("model", "'model' is required")
    n = check_type(body, "n", (int,), "an integer")
    if n is not None and not 1 <= n <= MAX_N:
        raise bad("n", f"'n' must be in [1, {MAX_N}], got {n}")
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in neutral:
            raise bad(name, f"'{name}' is not supported with value {_short(body[name])} (only "
                            f"{' or '.join(_short(v) for v in neutral)})")
    for name in sorted(set(body) - allowed - NO_EFFECT - set(NEUTRAL)):
        if name not in _warned and len(_warned) < MAX_WARNED:  # once per name: a client repeats it on every call
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
                                logit_bias=token_keys(body.get("logit_bias")), min_tokens=given(body, "min_tokens", 0),
                                structured=structured_of(body))
    except RequestError as e:
        if e.param == "max_tokens" and max_tokens_field != "max_tokens":
            message = str(e).replace("'max_tokens'", f"'{max_tokens_field}'")
            raise RequestError(message, param=max_tokens_field) from None
        raise
    kv_transfer, kv_params = check_kv_params(body.get("kv_transfer_params"))
    structured_field = next((k for k in ("response_format", "structured_outputs", *STRUCTURED_FIELDS)
                             if body.get(k) not in (None, {"type": "text"})), None)
    meta = {"model": model, "stream": bool(body.get("stream", False)),
            "include_usage": bool(options.get("include_usage")),
            "continuous_usage": bool(options.get("continuous_usage_stats")), "timeout_s": timeout, "n": n or 1,
            "structured_field": structured_field, "kv_transfer": kv_transfer, "kv_transfer_params": kv_params}
    return meta, params


STRUCTURED_FIELDS = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
                     "guided_grammar": "grammar"}  # vLLM's older names
STRUCTURED_KEYS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
                   "json_object": "json_object"}  # vLLM's structured_outputs object


def structured_of(body: dict) -> dict[str, Any] | None:
    """The one grammar a request asks for: OpenAI's response_format, or vLLM's structured_outputs / guided_*."""
    found = []
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise bad("response_format", "'response_format' must be {'type': 'text' | 'json_object' | 'json_schema'}")
        if kind == "json_object":
            found.append(("response_format", {"json_object": True}))
        elif kind == "json_schema":
            inner = fmt.get("json_schema")
            schema = inner.get("schema") if isinstance(inner, dict) else None
            if not isinstance(schema, (dict, bool)):
                raise bad("response_format", "'response_format.json_schema.schema' must be a JSON schema")
            found.append(("response_format", {"json_schema": schema}))
    for name, kind in STRUCTURED_FIELDS.items():
        if body.get(name) is not None:
            value = body[name]
            if kind == "json_schema" and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise bad(name, f"'{name}' is not valid JSON") from None
            found.append((name, {kind: value}))
    outputs = body.get("structured_outputs")
    if outputs is not None:
        given_keys = [k for k in STRUCTURED_KEYS if isinstance(outputs, dict) and outputs.get(k) not in (None, False)]
        if len(given_keys) != 1:
            raise bad("structured_outputs", f"'structured_outputs' must give one of {', '.join(STRUCTURED_KEYS)}")
        found.append(("structured_outputs", {STRUCTURED_KEYS[given_keys[0]]: outputs[given_keys[0]]}))
    if len(found) > 1:
        raise bad(found[1][0], f"'{found[0][0]}' and '{found[1][0]}' both constrain the output; give one")
    if not found:
        return None
    name, spec = found[0]
    try:
        return check_spec(spec)
    except RequestError as e:
        raise bad(name, f"'{name}': {e}") from None


def tool_choice_of(body: dict, tools: list[dict] | None) -> Any:
    """"none", "auto", "required" or {"name": f}: OpenAI's tool_choice (also the Responses API's flat form)."""
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "none"):
            raise bad("tool_choice", "'tool_choice' needs 'tools'")
        return "none"
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        return choice
    function = choice.get("function", choice) if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise bad("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or "
                                 "{'type': 'function', 'function': {'name': ...}}")
    if name not in {t["function"]["name"] for t in tools}:
        raise bad("tool_choice", f"'tool_choice' names the function '{name}', which is not in 'tools'")
    return {"name": name}


MAX_FORCED_CALLS = 16  # tool_choice "required": the most calls one turn may make (1 with parallel_tool_calls false)


def forced_tool_schema(tools: list[dict], choice: Any, parallel: bool = True) -> dict[str, Any] | None:
    """The JSON schema a forced tool choice constrains the output to (vLLM's approach): the named function's
    arguments, or for "required" an array of 1 to MAX_FORCED_CALLS (1 when `parallel` is off) {"name",
    "parameters"} calls to any of the tools. Objects that list their properties take only those (`closed`):
    otherwise a model may add keys without end and never finish the call."""
    parameters = {t["function"]["name"]: closed(t["function"].get("parameters") or {"type": "object"})
                  for t in tools}
    if isinstance(choice, dict):
        return parameters[choice["name"]]
    if choice != "required":
        return None
    calls = [{"type": "object", "properties": {"name": {"const": name}, "parameters": schema},
              "required": ["name", "parameters"], "additionalProperties": False}
             for name, schema in parameters.items()]
    return {"type": "array", "minItems": 1, "maxItems": MAX_FORCED_CALLS if parallel else 1,
            "items": {"anyOf": calls}}


def closed(schema: Any) -> Any:
    """A parameters schema as OpenAI's strict mode reads it: every object that lists its `properties` and says
    nothing of `additionalProperties` takes no others (nested objects, array items and alternatives too).

    >>> closed({"type": "object", "properties": {"a": {"type": "object", "properties": {}}}})
    {'type': 'object', 'properties': {'a': {'type': 'object', 'properties': {}, 'additionalProperties': False}}, \
'additionalProperties': False}
    """
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {k: closed(v) for k, v in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not", "additionalItems"):
            out[key] = closed(value)
        else:
            out[key] = value
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def is_batch(prompt: Any) -> bool:
    """A completions prompt that is several prompts: a list of strings or a list of token-id lists."""
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(p, (str, list)) for p in prompt)


def token_keys(bias: Any) -> Any:
    """OpenAI's logit_bias has token ids as string keys ("50256": -100); SamplingParams checks the values."""
    if not isinstance(bias, dict):
        return bias
    try:
        return {int(k): v for k, v in bias.items()}
    except (TypeError, ValueError):
        raise RequestError("'logit_bias' keys must be token ids", param="logit_bias") from None


def parse_chat(body: Any) -> GenerateRequest:
    body = whole_numbers(body) if isinstance(body, dict) else body
    meta, params = parse_common(body, CHAT, "chat")
    chat = check_chat(body.get("messages"), body.get("tools"), body.get("chat_template_kwargs"))
    tools = chat.tools
    choice = tool_choice_of(body, tools)
    parallel = check_type(body, "parallel_tool_calls", (bool,), "a boolean")
    forced = forced_tool_schema(tools, choice, parallel is not False) if tools else None
    if forced is not None:
        # a forced call is this turn's output; a response_format (what the Agents SDK sends for an output_type
        # beside required tools) is for the final answer, a later turn: the call's grammar takes this one
        params.structured = {"json_schema": forced}
        meta["structured_field"] = "tool_choice"
    logprobs = check_type(body, "logprobs", (bool,), "a boolean")
    top = check_type(body, "top_logprobs", (int,), "an integer")
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise bad("top_logprobs", f"'top_logprobs' must be in [0, {MAX_LOGPROBS}], got {top}")
    if top and not logprobs:
        raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    params.logprobs = (top or 0) if logprobs else None
    return GenerateRequest("chat", prompt=chat, params=params, tools=tools, tool_choice=choice,
                           logprobs=params.logprobs, parallel_tool_calls=parallel is not False, **meta)


def parse_completion(body: Any) -> GenerateRequest:
    body = whole_numbers(body) if isinstance(body, dict) else body
    meta, params = parse_common(body, COMPLETION, "completion")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    logprobs = check_type(body, "logprobs", (int,), "an integer")
    if logprobs is not None and not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS:
        raise bad("logprobs", f"'logprobs' must be in [0, {MAX_COMPLETION_LOGPROBS}], got {logprobs}")
    echo = bool(check_type(body, "echo", (bool,), "a boolean"))
    params.logprobs = logprobs
    if echo and logprobs is not None:
        params.prompt_logprobs = logprobs
    return GenerateRequest("completion", prompt=prompt, params=params, logprobs=logprobs, echo=echo, **meta)


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


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
