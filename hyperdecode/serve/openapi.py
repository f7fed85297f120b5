"""The OpenAPI contract of the server (`/openapi.json`): every POST route's request body, and for every route each
status code and content type it really answers, with the OpenAI error envelope on every error. The request
schemas say what protocol.py and responses.py enforce (types, ranges, enums), so a body the schema rejects is a
400 and one it admits is never a 5xx (tests/serve/test_contract.py fuzzes the server against it); semantic rules
between fields (stream_options needs stream, top_logprobs needs logprobs, the context limit) stay in the prose.

>>> sorted(ROUTES["post /v1/chat/completions"]["responses"])
['200', '400', '401', '404', '413', '429', '500', '503']
"""
from __future__ import annotations

from typing import Any

from ..engine.sampling import MAX_LOGPROBS, MAX_STOP_STRINGS
from .protocol import MAX_COMPLETION_LOGPROBS, MAX_N

__all__ = ["ROUTES", "document", "ERROR"]

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
ERRORS = {
    "400": "a field or the body is invalid (the message and `param` name it)",
    "401": "the API key is missing or wrong (--api-key)",
    "404": "the model named is not the one served",
    "413": "the body is larger than --max-request-bytes",
    "429": "the queue is full (--max-queue)",
    "500": "a fault in the server (a bug: no valid request should meet one)",
    "503": "the model is loading or failed, or the engine did not answer in time",
}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def integer(low: int | None = None, high: int | None = None) -> dict:
    out: dict[str, Any] = {"type": "integer"}
    if low is not None:
        out["minimum"] = low
    if high is not None:
        out["maximum"] = high
    return nullable(out)


def number(low: float | None = None, high: float | None = None, above: float | None = None) -> dict:
    out: dict[str, Any] = {"type": "number"}
    if low is not None:
        out["minimum"] = low
    if high is not None:
        out["maximum"] = high
    if above is not None:
        out["exclusiveMinimum"] = above
    return nullable(out)


BOOLEAN = nullable({"type": "boolean"})
TEXT = {"type": "string", "minLength": 1}
STOP = nullable({"anyOf": [TEXT, {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": TEXT}]})
SCHEMA = {"anyOf": [{"type": "object"}, {"type": "boolean"}]}  # a JSON schema
RESPONSE_FORMAT = nullable({"anyOf": [
    {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
    {"type": "object", "required": ["type", "json_schema"], "properties": {
        "type": {"const": "json_schema"},
        "json_schema": {"type": "object", "required": ["schema"], "properties": {"name": {"type": "string"},
                                                                                "schema": SCHEMA}}}}]})
SAMPLING = {
    "model": {"type": "string", "minLength": 1},
    "max_tokens": integer(1),
    "temperature": number(0, 2),
    "top_p": number(high=1, above=0),
    "top_k": integer(-1),
    "seed": integer(-(2 ** 63), 2 ** 64 - 1),
    "n": integer(1, MAX_N),
    "stop": STOP,
    "stream": BOOLEAN,
    "ignore_eos": BOOLEAN,
    "skip_special_tokens": BOOLEAN,
    "frequency_penalty": number(-2, 2),
    "presence_penalty": number(-2, 2),
    "repetition_penalty": number(above=0),
    "min_tokens": integer(0),
    "logit_bias": nullable({"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}}),
    "request_timeout": number(above=0),
    "response_format": RESPONSE_FORMAT,
}
FUNCTION = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}, "description": {"type": "string"},
    "parameters": {"type": "object"}, "strict": BOOLEAN}}
TOOLS = nullable({"type": "array", "items": {"type": "object", "required": ["type", "function"], "properties": {
    "type": {"const": "function"}, "function": FUNCTION}}})
TOOL_CHOICE = nullable({"anyOf": [
    {"enum": ["none", "auto", "required"]},
    {"type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"}, "function": {"type": "object", "required": ["name"],
                                                    "properties": {"name": {"type": "string"}}}}}]})
CONTENT = {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
    "type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"},
                                                                   "text": {"type": "string"}}}}]}
MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]}, "content": CONTENT,
    "name": {"type": "string"}, "tool_call_id": {"type": "string"},
    "tool_calls": {"type": "array", "items": {"type": "object"}}}}
CHAT_REQUEST = {"type": "object", "required": ["model", "messages"], "properties": {
    **SAMPLING,
    "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
    "max_completion_tokens": integer(1),
    "logprobs": BOOLEAN,
    "top_logprobs": integer(0, MAX_LOGPROBS),
    "tools": TOOLS,
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": BOOLEAN,
    "chat_template_kwargs": nullable({"type": "object"}),
    "stream_options": nullable({"type": "object", "additionalProperties": False, "properties": {
        "include_usage": {"type": "boolean"}, "continuous_usage_stats": {"type": "boolean"}}}),
}}
PROMPT = {"anyOf": [TEXT, {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                    {"type": "array", "minItems": 1, "items": {"anyOf": [
                        TEXT, {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}]}}]}
COMPLETION_REQUEST = {"type": "object", "required": ["model", "prompt"], "properties": {
    **SAMPLING, "prompt": PROMPT, "echo": BOOLEAN, "logprobs": integer(0, MAX_COMPLETION_LOGPROBS),
    "stream_options": CHAT_REQUEST["properties"]["stream_options"]}}
INPUT_ITEM = {"anyOf": [
    {"type": "object", "required": ["role", "content"], "properties": {
        "type": {"const": "message"}, "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": CONTENT}},
    {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
        "type": {"const": "function_call"}, "call_id": {"type": "string"}, "name": {"type": "string"},
        "arguments": {"type": "string"}}},
    {"type": "object", "required": ["type", "call_id", "output"], "properties": {
        "type": {"const": "function_call_output"}, "call_id": {"type": "string"}}}]}
RESPONSES_REQUEST = {"type": "object", "required": ["model", "input"], "properties": {
    "model": SAMPLING["model"], "temperature": SAMPLING["temperature"], "top_p": SAMPLING["top_p"],
    "top_k": SAMPLING["top_k"], "seed": SAMPLING["seed"], "stream": BOOLEAN, "ignore_eos": BOOLEAN,
    "max_output_tokens": integer(1), "instructions": nullable({"type": "string"}),
    "input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": INPUT_ITEM}]},
    "tools": nullable({"type": "array", "items": {"type": "object", "required": ["type", "name"], "properties": {
        "type": {"const": "function"}, "name": FUNCTION["properties"]["name"],
        "description": {"type": "string"}, "parameters": {"type": "object"}}}}),
    "tool_choice": nullable({"anyOf": [{"enum": ["none", "auto", "required"]}, {
        "type": "object", "required": ["type", "name"], "properties": {"type": {"const": "function"},
                                                                        "name": {"type": "string"}}}]}),
    "parallel_tool_calls": BOOLEAN,
    "text": nullable({"type": "object", "properties": {"format": nullable({"anyOf": [
        {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
        {"type": "object", "required": ["type", "schema"], "properties": {
            "type": {"const": "json_schema"}, "name": {"type": "string"}, "schema": SCHEMA}}]})}}),
}}
TOKENIZE_REQUEST = {"anyOf": [
    {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
    {"type": "object", "required": ["messages"], "properties": {
        "messages": CHAT_REQUEST["properties"]["messages"], "tools": TOOLS,
        "chat_template_kwargs": CHAT_REQUEST["properties"]["chat_template_kwargs"]}}]}
DETOKENIZE_REQUEST = {"type": "object", "required": ["tokens"], "properties": {
    "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}}}

USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"], "properties": {
    "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
    "total_tokens": {"type": "integer"}}}
FINISH = {"enum": ["stop", "length", "tool_calls", "abort", "error", None]}
CHAT_COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
                   "properties": {"object": {"const": "chat.completion"}, "id": {"type": "string"},
                                  "model": {"type": "string"}, "usage": USAGE, "choices": {
                                      "type": "array", "items": {"type": "object", "required": [
                                          "index", "message", "finish_reason"], "properties": {
                                          "index": {"type": "integer"}, "finish_reason": FINISH, "message": {
                                              "type": "object", "required": ["role"], "properties": {
                                                  "role": {"const": "assistant"},
                                                  "content": {"type": ["string", "null"]},
                                                  "tool_calls": {"type": "array"}}}}}}}}
TEXT_COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
                   "properties": {"object": {"const": "text_completion"}, "usage": USAGE, "choices": {
                       "type": "array", "items": {"type": "object", "required": ["index", "text", "finish_reason"],
                                                  "properties": {"text": {"type": "string"},
                                                                 "finish_reason": FINISH}}}}}
RESPONSE = {"type": "object", "required": ["id", "object", "status", "output"], "properties": {
    "object": {"const": "response"}, "status": {"enum": ["completed", "incomplete"]},
    "output": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
        "type": {"enum": ["message", "function_call"]}}}}}}
SSE = {"type": "string", "description": "server-sent events: one JSON object per `data:` line, then [DONE]"}
MODEL = {"type": "object", "required": ["id", "object"], "properties": {"id": {"type": "string"},
                                                                          "object": {"const": "model"}}}


def answers(ok: dict | None, ok_type: str = "application/json", errors: tuple[str, ...] = (), stream: bool = False
            ) -> dict[str, Any]:
    """An operation's responses: 200 (JSON, or also SSE when it streams) and each error status with the envelope."""
    content = {ok_type: {"schema": ok or {}}}
    if stream:
        content["text/event-stream"] = {"schema": SSE}
    out = {"200": {"description": "OK", "content": content}}
    for status in errors:
        out[status] = {"description": ERRORS[status], "content": {"application/json": {"schema": ERROR}}}
    return out


GENERATE_ERRORS = ("400", "401", "404", "413", "429", "500", "503")
ROUTES = {  # "method path": {"body": request schema or None, "responses": ...}
    "post /v1/chat/completions": dict(body=CHAT_REQUEST, responses=answers(CHAT_COMPLETION, errors=GENERATE_ERRORS,
                                                                           stream=True)),
    "post /v1/completions": dict(body=COMPLETION_REQUEST, responses=answers(TEXT_COMPLETION, errors=GENERATE_ERRORS,
                                                                            stream=True)),
    "post /v1/responses": dict(body=RESPONSES_REQUEST, responses=answers(RESPONSE, errors=GENERATE_ERRORS,
                                                                         stream=True)),
    "post /tokenize": dict(body=TOKENIZE_REQUEST, responses=answers({"type": "object", "required": [
        "tokens", "count"], "properties": {"tokens": {"type": "array", "items": {"type": "integer"}}}},
        errors=("400", "413", "500", "503"))),
    "post /detokenize": dict(body=DETOKENIZE_REQUEST, responses=answers({"type": "object", "required": ["prompt"]},
                                                                        errors=("400", "413", "500", "503"))),
    "get /v1/models": dict(body=None, responses=answers({"type": "object", "required": ["object", "data"],
                                                          "properties": {"data": {"type": "array", "items": MODEL}}},
                                                         errors=("401", "500", "503"))),
    "get /v1/models/{model_id}": dict(body=None, responses=answers(MODEL, errors=("401", "404", "500", "503"))),
    "get /health": dict(body=None, responses=answers({"type": "object", "required": ["status"]},
                                                     errors=("400", "500", "503"))),
    "get /ready": dict(body=None, responses=answers({"type": "object", "required": ["status"]},
                                                    errors=("500", "503"))),
    "get /version": dict(body=None, responses=answers({"type": "object", "required": ["version"]},
                                                      errors=("500",))),
    "get /metrics": dict(body=None, responses=answers({"type": "string"}, "text/plain", errors=("500", "503"))),
}


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's generated spec with ROUTES' bodies and responses put in (its 422 validation answers, which this
    server never gives, are gone: a bad query parameter is a 400 here too)."""
    for key, route in ROUTES.items():
        method, path = key.split(" ", 1)
        operation = spec["paths"].get(path, {}).get(method)
        if operation is None:
            raise KeyError(f"the app has no route {method.upper()} {path} (openapi.py's ROUTES names it)")
        if route["body"] is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": route["body"]}}}
        operation["responses"] = route["responses"]
    spec.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    spec.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    return spec
