"""Chat messages and tools as a chat template sees them: OpenAI's message shapes (text parts, assistant
`tool_calls`, `tool` results) normalized, and, for a template that knows no tools, the tools and calls written into
the messages in the Hermes form (a `<tools>` list in the system message, `<tool_call>{json}</tool_call>` in the
assistant's turn, `<tool_response>` in a user turn) that the "hermes" parser reads back.

>>> m = normalize_messages([{"role": "assistant", "content": None,
...     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\\"x\\": 1}"}}]}])
>>> m[0]["tool_calls"][0]["function"]["arguments"]
{'x': 1}
"""
from __future__ import annotations

import json
import re
from typing import Any

from ..errors import RequestError

__all__ = ["ROLES", "normalize_messages", "check_tools", "template_tool_support", "hermes_messages",
           "with_tools_listed", "lone_surrogate", "require_unicode"]

ROLES = ("system", "user", "assistant", "developer", "tool")


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


def _text(content: Any, where: str, optional: bool) -> str:
    """A message's content as one string (text parts joined; None allowed where `optional`)."""
    if content is None and optional:
        return ""
    if isinstance(content, list):  # text parts only
        if not all(isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
                   and isinstance(p.get("text"), str) for p in content):
            raise RequestError("only text content parts are supported", param=where)
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise RequestError(f"{where} must be a string", param=where)
    require_unicode(content, where)
    return content


class Arguments(dict):
    """A call's arguments as templates use them: GLM's iterates them as a mapping, DeepSeek's concatenates them
    as the JSON text (`'...' + tool['function']['arguments']`); both work on this one value."""

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)

    def __add__(self, other: Any) -> str:
        return str(self) + other

    def __radd__(self, other: Any) -> str:
        return other + str(self)


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """An assistant's tool call with its arguments parsed (templates iterate over them as a mapping)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RequestError(f"{where} needs a 'function' with a 'name'", param=f"{where}.function")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            raise RequestError(f"{where}.function.arguments is not valid JSON",
                               param=f"{where}.function.arguments") from None
    if not isinstance(arguments, dict):
        raise RequestError(f"{where}.function.arguments must be a JSON object", param=f"{where}.function.arguments")
    arguments = Arguments(arguments)
    out = {"type": "function", "function": {"name": function["name"], "arguments": arguments},
           "name": function["name"], "arguments": arguments}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages as {"role", "content"} with string content (text parts joined); an assistant message may
    carry `tool_calls` (its content then may be null), a `tool` message its `tool_call_id` and `name`."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"{where} needs a 'role' in {ROLES}", param=f"{where}.role")
        if m.get("tool_calls") is not None and not isinstance(m["tool_calls"], list):
            raise RequestError(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None and not isinstance(m[key], str):
                raise RequestError(f"{where}.{key} must be a string", param=f"{where}.{key}")
        calls = m.get("tool_calls") if m["role"] == "assistant" else None
        message: dict[str, Any] = {"role": m["role"],
                                   "content": _text(m.get("content"), f"{where}.content", optional=bool(calls))}
        if calls:
            message["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
        for key in ("tool_call_id", "name"):
            if m["role"] == "tool" and isinstance(m.get(key), str):
                message[key] = m[key]
        out.append(message)
    return out


def check_tools(tools: Any) -> list[dict[str, Any]] | None:
    """OpenAI's `tools`: a list of {"type": "function", "function": {"name", "description", "parameters"}}."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise RequestError("'tools' must be a list", param="tools")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RequestError(f"'tools[{i}]' must be {{'type': 'function', 'function': {{'name': ...}}}}",
                               param=f"tools[{i}]")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON schema object",
                               param=f"tools[{i}].function.parameters")
        if function["name"] in names:
            raise RequestError(f"tools[{i}]: the function name '{function['name']}' is given twice",
                               param=f"tools[{i}].function.name")
        names.add(function["name"])
    return tools


def template_tool_support(template: str | None) -> tuple[bool, bool]:
    """(lists tools, renders calls): whether a chat template renders the `tools` it is given, and whether it
    renders assistant `tool_calls` and `tool` results itself (DeepSeek-V3.1's does the latter only)."""
    if template is None:
        return False, False
    return re.search(r"\btools\b", template) is not None, "tool_calls" in template


def hermes_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with calls and results written in as text (Hermes's form), for a template that only renders
    roles and string contents."""
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
            continue
        if m.get("tool_calls"):
            calls = "\n".join(f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['arguments']})}\n"
                              "</tool_call>" for c in m["tool_calls"])
            out.append({"role": m["role"], "content": (m["content"] + "\n" if m["content"] else "") + calls})
            continue
        out.append({"role": m["role"], "content": m["content"]})
    return out


def with_tools_listed(messages: list[dict[str, Any]], tools: list[dict[str, Any]], how_to_call: bool
                      ) -> list[dict[str, Any]]:
    """The tools listed in the system message (added first if there is none), for a template that does not list
    them; `how_to_call` adds Hermes's call form (for a model whose template knows no call form of its own)."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    preamble = f"You can call functions. Their signatures are listed in <tools></tools>:\n<tools>\n{listing}\n</tools>"
    if how_to_call:
        preamble += ("\nTo call one, answer with a JSON object naming it and giving its arguments, inside "
                     "<tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function name>, \"arguments\": "
                     "<arguments as a JSON object>}\n</tool_call>")
    if messages and messages[0]["role"] in ("system", "developer"):
        first = {**messages[0], "content": messages[0]["content"] + "\n\n" + preamble}
        return [first] + messages[1:]
    return [{"role": "system", "content": preamble}] + messages
