"""OpenAI's Responses API (`POST /v1/responses`), the subset an agent loop needs: input as a string or a list of
items (messages, `function_call`s, `function_call_output`s), `instructions`, function `tools` and `tool_choice`,
`text.format` (structured output), and streaming events. A request becomes a chat request (the same template,
tool parsers, grammar and engine path); nothing is stored, so `previous_response_id` is refused.

>>> messages_of({"instructions": "Be brief.", "input": "hi"})
[{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from ..engine.output import Generation
from .generation import Choice, message_of
from ..errors import RequestError
from .protocol import APIError, GenerateRequest, parse_chat, whole_numbers

__all__ = ["parse_response_request", "messages_of", "response_body", "response_events", "renamed"]

FIELDS = {"model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "temperature", "top_p",
          "stream", "text", "seed", "top_k", "structured_outputs", "ignore_eos"}  # the last four: vLLM's extensions
NO_EFFECT = {"store", "metadata", "user", "include", "service_tier", "truncation", "prompt_cache_key",
             "safety_identifier", "stream_options", "background"}
FIELDS = FIELDS | {"parallel_tool_calls"}
CHAT_NAMES = {"max_tokens": "max_output_tokens", "response_format": "text.format", "messages": "input"}  # in this API
NEUTRAL = {"previous_response_id": (None,), "reasoning": (None,), "conversation": (None,), "prompt": (None,),
           "background": (None, False), "max_tool_calls": (None,)}


def bad(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


def _text(content: Any, where: str) -> Any:
    """An item's content: a string, or its text parts (input_text / output_text) as chat text parts."""
    if isinstance(content, str) or content is None:
        return content
    if isinstance(content, list):
        return [{"type": "text", "text": p.get("text")} if isinstance(p, dict) else p for p in content]
    raise bad(where, f"'{where}' must be a string or a list of text parts")


ROLES = ("user", "assistant", "system", "developer")


def messages_of(body: dict) -> list[dict[str, Any]]:
    """The chat messages of a Responses request: the instructions as a system message, then the input items (a
    run of function_call items is one assistant message with tool_calls; an output is a tool message). An item
    without the fields its type needs is a 400 naming it."""
    out: list[dict[str, Any]] = []
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise bad("instructions", "'instructions' must be a string")
        out.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return out + [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad("input", "'input' must be a string or a non-empty list of items")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(where, f"'{where}' must be an object (an input item)")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ROLES:
                raise bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(ROLES)}")
            if item.get("content") is None:
                raise bad(f"{where}.content", f"'{where}.content' is required")
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise bad(f"{where}.{name}", f"'{where}.{name}' must be a string (a function_call item)")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") is not None:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise bad(f"{where}.call_id", f"'{where}.call_id' must be a string (a function_call_output item)")
            if "output" not in item:
                raise bad(f"{where}.output", f"'{where}.output' is required (a function_call_output item)")
            output = item["output"]
            text = output if isinstance(output, str) else json.dumps(output)
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise bad(f"{where}.type", f"input items of type '{kind}' are not supported (message, function_call, "
                                       "function_call_output)")
    return out


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Responses' flat function tools as chat tools."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise bad("tools", "'tools' must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad(f"tools[{i}].type", "only function tools are supported")
        function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def response_format(text: Any) -> dict[str, Any] | None:
    """`text.format` as chat's response_format; a `text` or format of the wrong shape is a 400 naming it."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad("text", "'text' must be an object, e.g. {'format': {'type': 'json_schema', ...}}")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise bad("text.format", "'text.format' must be {'type': 'text' | 'json_object' | 'json_schema', ...}")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_schema":
        if not isinstance(fmt.get("schema"), (dict, bool)):
            raise bad("text.format", "'text.format.schema' must be a JSON schema")
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name"), "schema": fmt["schema"]}}
    return {"type": "json_object"}


def renamed(e: Exception) -> Exception:
    """A chat request's error in this API's words: its field names (max_output_tokens, text.format, input)."""
    param = getattr(e, "param", None)
    if param not in CHAT_NAMES:
        return e
    name = CHAT_NAMES[param]
    message = str(e.message if isinstance(e, APIError) else e).replace(f"'{param}'", f"'{name}'")
    message = message.replace(f"in the {param}", f"in the {name}").replace(f"the {param} or", f"the {name} or")
    status = e.status if isinstance(e, APIError) else 400
    return APIError(status, message, param=name)


def parse_response_request(body: Any) -> tuple[GenerateRequest, dict[str, Any]]:
    """The chat request a Responses body stands for, and the body (echoed in the response object)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    body = whole_numbers(body)
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in neutral:
            raise bad(name, f"'{name}' is not supported (responses are not stored)" if name == "previous_response_id"
                      else f"'{name}' is not supported")
    unknown = sorted(set(body) - FIELDS - NO_EFFECT - set(NEUTRAL))
    if unknown:
        raise bad(unknown[0], f"'{unknown[0]}' is not supported on /v1/responses")
    chat = {"model": body.get("model"), "messages": messages_of(body), "stream": body.get("stream"),
            "max_tokens": body.get("max_output_tokens"), "temperature": body.get("temperature"),
            "top_p": body.get("top_p"), "top_k": body.get("top_k"), "seed": body.get("seed"),
            "tools": chat_tools(body.get("tools")), "tool_choice": body.get("tool_choice"),
            "response_format": response_format(body.get("text")), "structured_outputs": body.get("structured_outputs"),
            "ignore_eos": body.get("ignore_eos"), "parallel_tool_calls": body.get("parallel_tool_calls")}
    try:
        return parse_chat({k: v for k, v in chat.items() if v is not None}), body
    except (APIError, RequestError) as e:
        raise renamed(e) from None


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(choice: Choice, result: Generation) -> list[dict[str, Any]]:
    message, _ = message_of(choice, result)
    items = []
    if message["content"]:
        items.append(text_item(new_item_id("msg"), message["content"], "completed"))
    for call in message.get("tool_calls", []):
        items.append(call_item(new_item_id("fc"), call["id"], call["function"]["name"],
                               call["function"]["arguments"], "completed"))
    return items


def text_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def response_body(rid: str, model: str, body: dict, created: float, status: str, output: list[dict],
                  result: Generation | None) -> dict[str, Any]:
    """The response object (status "in_progress" while streaming, "completed", or "incomplete" at the limit)."""
    usage = None
    if result is not None:
        stats = result.stats
        usage = {"input_tokens": stats.prompt_tokens, "input_tokens_details": {"cached_tokens": stats.cached_tokens},
                 "output_tokens": stats.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": stats.prompt_tokens + stats.output_tokens}
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {"id": rid, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
            "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "max_output_tokens": body.get("max_output_tokens"), "instructions": body.get("instructions"),
            "text": body.get("text") or {"format": {"type": "text"}}, "truncation": "disabled",
            "previous_response_id": None, "reasoning": None, "store": False, "metadata": body.get("metadata") or {},
            "error": None, "incomplete_details": incomplete, "usage": usage}


def status_of(result: Generation) -> str:
    return "incomplete" if result.finish_reason == "length" else "completed"


async def response_events(rid: str, model: str, body: dict, choice: Choice, next_event: Any
                          ) -> AsyncIterator[str]:
    """The streamed events: created, in_progress, each output item's added / delta / done events, completed."""
    created = time.time()
    number = 0
    output: list[dict] = []
    text_open: dict | None = None  # the message item being written
    calls: dict[int, dict] = {}  # tool-call index -> its function_call item

    def send(kind: str, **fields: Any) -> str:
        nonlocal number
        number += 1
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': number - 1, **fields})}\n\n"

    def close_text() -> list[str]:
        nonlocal text_open
        if text_open is None:
            return []
        item, text_open = text_open, None
        text = item["content"][0]["text"]
        index = output.index(item)
        item["status"] = "completed"
        part = item["content"][0]
        return [send("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                     text=text, logprobs=[]),
                send("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                     part=part),
                send("response.output_item.done", output_index=index, item=item)]

    def on_delta(delta: dict) -> list[str]:
        nonlocal text_open
        out = []
        if delta.get("content"):
            if text_open is None:
                text_open = text_item(new_item_id("msg"), "", "in_progress")
                output.append(text_open)
                index = len(output) - 1
                out += [send("response.output_item.added", output_index=index, item={**text_open, "content": []}),
                        send("response.content_part.added", item_id=text_open["id"], output_index=index,
                             content_index=0, part={"type": "output_text", "text": "", "annotations": []})]
            text_open["content"][0]["text"] += delta["content"]
            out.append(send("response.output_text.delta", item_id=text_open["id"], output_index=output.index(text_open),
                            content_index=0, delta=delta["content"], logprobs=[]))
        for call in delta.get("tool_calls") or []:
            out += close_text()
            item = calls.get(call["index"])
            if item is None:
                item = call_item(new_item_id("fc"), call.get("id"), call["function"].get("name"), "", "in_progress")
                calls[call["index"]] = item
                output.append(item)
                out.append(send("response.output_item.added", output_index=len(output) - 1, item=dict(item)))
            piece = call.get("function", {}).get("arguments") or ""
            if piece:
                item["arguments"] += piece
                out.append(send("response.function_call_arguments.delta", item_id=item["id"],
                                output_index=output.index(item), delta=piece))
        return out

    yield send("response.created", response=response_body(rid, model, body, created, "in_progress", [], None))
    yield send("response.in_progress", response=response_body(rid, model, body, created, "in_progress", [], None))
    while True:
        kind, payload = await next_event(choice.req)
        if kind == "error":
            yield send("error", code=payload.code, message=payload.message, param=payload.param)
            return
        if kind == "text":
            deltas = choice.tools.feed(payload[0]) if choice.tools is not None else [{"content": payload[0]}]
            for delta in deltas:
                for line in on_delta(delta):
                    yield line
            continue
        for delta in (choice.tools.close() if choice.tools is not None else []):
            for line in on_delta(delta):
                yield line
        for line in close_text():
            yield line
        for item in calls.values():
            item["status"] = "completed"
            index = output.index(item)
            yield send("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                       arguments=item["arguments"])
            yield send("response.output_item.done", output_index=index, item=item)
        final = response_body(rid, model, body, created, status_of(payload), output, payload)
        yield send("response.completed" if final["status"] == "completed" else "response.incomplete", response=final)
        return
