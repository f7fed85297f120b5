"""Tool calls out of a model's text, in OpenAI's shapes: whole (`parse_tool_calls`) or streamed (`ToolStream`).

The formats, named as vLLM's --tool-call-parser values:

- hermes (Hermes, Qwen2.5, Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
- glm45 = glm47 (GLM-4.5/4.6 write newlines between the parts, GLM-4.7/5 none): ``<tool_call>NAME<arg_key>K
  </arg_key><arg_value>V</arg_value></tool_call>``, each value raw text typed by the tool's schema (`glm_value`)
- deepseek_v3: ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```<｜tool▁call▁end｜>``, and
  deepseek_v31 (V3.1, V3.2-Exp): ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>``, the calls inside
  ``<｜tool▁calls▁begin｜>`` ... ``<｜tool▁calls▁end｜>``

One scanner serves both paths, so a stream's pieces add up to the whole parse wherever the text is split:

- A call is the text from its open to its close marker. One that parses is a tool call; one that does not (bad
  JSON, no close marker, an unknown structure) stays in the content as written: a malformed call never raises.
- Content is the text outside the calls as written, less the whitespace (and DeepSeek's wrapper markers) next to
  a call; text with no call comes back unchanged; empty content is None.
- A call naming a function not in `tools` is kept (as vLLM does): the client sees what the model asked for and can
  answer with an error the model recovers from.
- Arguments are a JSON string of an object, re-serialized from what the model wrote.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["PARSERS", "ToolStream", "parse_tool_calls", "parser_for_template", "parser_names", "new_call_id",
           "glm_value"]

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"  # fullwidth bars (U+FF5C) and lower blocks (U+2581), as DeepSeek's tokens
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
WS = re.compile(r"\s+")
WORD = re.compile(r"[^<\s]+")
BLANK_END = re.compile(r"\s*\Z")
GLM_PAIR = re.compile(r"\s*<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null", dict: "object",
              list: "array"}
Schemas = dict[str, dict[str, Any]]  # function name -> its parameters' properties


def new_call_id() -> str:
    """An OpenAI-style tool call id: "call_" and 24 hex digits."""
    return "call_" + uuid.uuid4().hex[:24]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    """Strict JSON (NaN and Infinity refused); raises ValueError."""
    return json.loads(text, parse_constant=_reject_constant)


def _object(value: Any) -> dict[str, Any] | None:
    """A call's arguments: an object, or a string holding one; None when neither."""
    if isinstance(value, str):
        try:
            value = _loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _name(text: str) -> str | None:
    name = text.strip()
    return name if name and not re.search(r"[\s<>]", name) else None


def schema_types(schema: Any) -> set[str] | None:
    """The JSON types a parameter's schema allows (from type, enum, const, anyOf/oneOf/allOf); None when it says
    none."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)} or None
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if isinstance(values, list) and values:
        return {JSON_TYPES.get(type(v), "string") for v in values}
    found: set[str] = set()
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or []:
            found |= schema_types(sub) or set()
    return found or None


def _fits(value: Any, types: set[str]) -> bool:
    kind = JSON_TYPES.get(type(value))
    return kind in types or (kind == "integer" and "number" in types)


def glm_value(raw: str, schema: Any = None) -> Any:
    """A GLM argument value. GLM's template writes strings raw and everything else as JSON, so: a parameter the
    schema types as string alone keeps its text as written (a "123" stays a string); one typed as something else,
    or untyped (unknown parameter, no schema), is JSON-decoded when it decodes, else kept as text; one whose types
    include string and others takes the decoded value only when it is one of the others.

    >>> glm_value("42", {"type": "integer"}), glm_value("42", {"type": "string"}), glm_value("true")
    (42, '42', True)
    >>> glm_value("Beijing"), glm_value("null", {"type": ["string", "null"]})
    ('Beijing', None)
    """
    types = schema_types(schema)
    try:
        value = _loads(raw.strip())
    except (ValueError, RecursionError):
        return raw
    if types is None or "string" not in types:
        return value
    return value if not isinstance(value, str) and _fits(value, types) else raw


def _schemas(tools: list[dict] | None) -> Schemas:
    out: Schemas = {}
    for tool in tools or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, dict) else None
            out[function["name"]] = properties if isinstance(properties, dict) else {}
    return out


def _hermes(body: str, schemas: Schemas) -> tuple[str, dict] | None:
    """``{"name": ..., "arguments": {...}}`` (arguments may be missing, or a string holding the object)."""
    try:
        value = _loads(body.strip())
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or _name(value["name"]) is None:
        return None
    arguments = _object(value.get("arguments", {}))
    return None if arguments is None else (_name(value["name"]), arguments)


def _glm(body: str, schemas: Schemas) -> tuple[str, dict] | None:
    """NAME, then <arg_key>K</arg_key><arg_value>V</arg_value> pairs, whitespace between them allowed."""
    cut = min((i for i in (body.find("\n"), body.find("<arg_key>")) if i >= 0), default=len(body))
    name = _name(body[:cut])
    if name is None:
        return None
    properties = schemas.get(name, {})
    arguments: dict[str, Any] = {}
    pos = cut
    while not BLANK_END.match(body, pos):
        pair = GLM_PAIR.match(body, pos)
        if pair is None or "<arg_" in pair[1] + pair[2] or not pair[1].strip():
            return None
        key = pair[1].strip()
        arguments[key] = glm_value(pair[2], properties.get(key))
        pos = pair.end()
    return name, arguments


def _deepseek_v3(body: str, schemas: Schemas) -> tuple[str, dict] | None:
    """``function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```"""
    kind, sep, rest = body.partition(TOOL_SEP)
    found = re.fullmatch(r"([^\n]*)\n\s*```json\s*\n(.*)\n\s*```\s*", rest, re.S)
    if not sep or kind.strip() != "function" or found is None or _name(found[1]) is None:
        return None
    arguments = _object(found[2])
    return None if arguments is None else (_name(found[1]), arguments)


def _deepseek_v31(body: str, schemas: Schemas) -> tuple[str, dict] | None:
    """``NAME<｜tool▁sep｜>{...}``"""
    name, sep, rest = body.partition(TOOL_SEP)
    arguments = _object(rest.strip())
    if not sep or _name(name) is None or arguments is None:
        return None
    return _name(name), arguments


@dataclass(frozen=True)
class Format:
    """A tool-call syntax: a call's open and close markers, the markers dropped around calls (`glue`), and the
    parser of the text between the markers (None: not a call)."""
    open: str
    close: str
    body: Callable[[str, Schemas], tuple[str, dict] | None]
    glue: tuple[str, ...] = ()


GLM = Format("<tool_call>", "</tool_call>", _glm)
PARSERS: dict[str, Format] = {
    "hermes": Format("<tool_call>", "</tool_call>", _hermes),
    "glm45": GLM,
    "glm47": GLM,
    "deepseek_v3": Format(CALL_BEGIN, CALL_END, _deepseek_v3, (CALLS_BEGIN, CALLS_END)),
    "deepseek_v31": Format(CALL_BEGIN, CALL_END, _deepseek_v31, (CALLS_BEGIN, CALLS_END)),
}


def parser_names() -> list[str]:
    """The --tool-call-parser values this server knows."""
    return sorted(PARSERS)


def parser_for_template(chat_template: str | None) -> str | None:
    """The parser a chat template's tool-call markers name; None when it shows none this module knows.

    >>> parser_for_template("{{ '<tool_call>' + tc.name }}<arg_key>{{ k }}</arg_key><arg_value>{{ v }}</arg_value>")
    'glm47'
    >>> parser_for_template("<tool_call>\\n{{ tool_call | tojson }}\\n</tool_call>"), parser_for_template("{{ x }}")
    ('hermes', None)
    """
    if not chat_template:
        return None
    if TOOL_SEP in chat_template:
        return "deepseek_v3" if "```json" in chat_template else "deepseek_v31"
    if "<arg_key>" in chat_template:
        return "glm47" if "</arg_key><arg_value>" in chat_template else "glm45"
    if "<tool_call>" in chat_template and "<function=" not in chat_template:  # <function=: Qwen3-Coder's XML form
        return "hermes"
    return None


def _format(parser: str) -> Format:
    if parser not in PARSERS:
        raise ValueError(f"unknown tool-call parser '{parser}' (known: {', '.join(parser_names())})")
    return PARSERS[parser]


class ToolStream:
    """A streamed output's chat-completion delta pieces: ``{"content": ...}`` for text, ``{"tool_calls": [...]}``
    for a call, which comes out whole (id, type, name, arguments) once its close marker arrives. Text that may
    begin a marker, and whitespace that may border a call, is held until it is known to be text.

    >>> s = ToolStream("hermes", None)
    >>> s.feed("Let me look.\\n<tool_")
    [{'content': 'Let me look.'}]
    >>> [p["tool_calls"][0]["function"] for p in s.feed('call>{"name": "f", "arguments": {"x": 1}}</tool_call>')]
    [{'name': 'f', 'arguments': '{"x": 1}'}]
    >>> s.close(), s.called
    ([], True)
    """

    def __init__(self, parser: str, tools: list[dict] | None = None, limit: int | None = None):
        self.parser = parser
        self.tools = tools
        self.limit = limit  # the most calls emitted (parallel_tool_calls false: 1); later ones are dropped
        self.format = _format(parser)
        self._schemas = _schemas(tools)
        self._buf = ""  # text not yet scanned (in a call: the call's text after its open marker)
        self._in_call = False
        self._searched = 0  # in a call: where the search for the close marker resumes
        self._glue = ""  # whitespace and glue markers, kept or dropped by what follows them
        self._after_call = False  # the glue follows a call (so it is dropped)
        self._calls = 0
        self._out: list[dict] = []

    @property
    def called(self) -> bool:
        """Whether a tool call was emitted (the finish reason is then "tool_calls")."""
        return self._calls > 0

    def feed(self, delta: str) -> list[dict]:
        """The pieces the new text completes."""
        self._buf += delta
        self._scan(final=False)
        return self._take()

    def close(self) -> list[dict]:
        """The pieces still held: an unclosed call's text and held text come out as content."""
        self._scan(final=True)
        if self._in_call:
            self._text(self.format.open + self._buf)
        self._buf = ""
        self._in_call = False
        if not self._after_call:
            self._say(self._glue)
        self._glue = ""
        return self._take()

    def _scan(self, final: bool) -> None:
        fmt, buf, i = self.format, self._buf, 0
        while i < len(buf):
            if self._in_call:
                end = buf.find(fmt.close, max(i, self._searched))
                if end < 0:
                    self._searched = max(i, len(buf) - len(fmt.close) + 1)
                    break
                self._in_call = False
                self._end_call(buf[i:end])
                i = end + len(fmt.close)
                continue
            space = WS.match(buf, i)
            if space:
                self._glue += space[0]
                i = space.end()
            elif buf.startswith(fmt.open, i):
                i += len(fmt.open)
                self._in_call = True
                self._searched = i
            elif marker := self._glue_at(buf, i):
                self._glue += marker
                i += len(marker)
            elif not final and self._may_begin_marker(buf, i):
                break
            else:
                word = WORD.match(buf, i)
                stop = word.end() if word else i + 1  # a "<" that begins no marker
                self._text(buf[i:stop])
                i = stop
        self._buf = buf[i:]
        self._searched = max(0, self._searched - i)

    def _glue_at(self, buf: str, i: int) -> str:
        return next((m for m in self.format.glue if buf.startswith(m, i)), "")

    def _may_begin_marker(self, buf: str, i: int) -> bool:
        """Whether the rest of `buf` (from `i`) is a marker's beginning, so more text must come to tell."""
        rest = len(buf) - i
        return any(rest < len(m) and m.startswith(buf[i:]) for m in (self.format.open, *self.format.glue))

    def _end_call(self, body: str) -> None:
        try:
            found = self.format.body(body, self._schemas)
        except Exception:  # a parser's oversight must not cost the text: it becomes content
            found = None
        if found is None:
            self._text(self.format.open + body + self.format.close)
            return
        name, arguments = found
        if self.limit is not None and self._calls >= self.limit:
            self._glue = ""
            self._after_call = True
            return
        call = {"index": self._calls, "id": new_call_id(), "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        self._out.append({"tool_calls": [call]})
        self._calls += 1
        self._glue = ""
        self._after_call = True

    def _text(self, text: str) -> None:
        if not self._after_call:
            self._say(self._glue)
        self._glue = ""
        self._after_call = False
        self._say(text)

    def _say(self, text: str) -> None:
        if not text:
            return
        if not self._out or "tool_calls" in self._out[-1]:
            self._out.append({"content": []})
        self._out[-1]["content"].append(text)  # joined in _take: one piece for a run of text

    def _take(self) -> list[dict]:
        out = [{"content": "".join(p["content"])} if "content" in p else p for p in self._out]
        self._out = []
        return out


def parse_tool_calls(text: str, parser: str, tools: list[dict] | None = None, limit: int | None = None
                     ) -> tuple[str | None, list[dict]]:
    """A whole output's content (None when empty) and tool calls, each {"id", "type": "function", "function":
    {"name", "arguments": <JSON string>}}; `tools` (the request's) types GLM's values; at most `limit` calls (vLLM
    keeps the first when parallel_tool_calls is false).

    >>> content, calls = parse_tool_calls('On it.\\n<tool_call>\\n{"name": "f", "arguments": {"x": [1]}}\\n'
    ...                                   '</tool_call>', "hermes")
    >>> content, calls[0]["function"], calls[0]["id"].startswith("call_")
    ('On it.', {'name': 'f', 'arguments': '{"x": [1]}'}, True)
    >>> parse_tool_calls('<tool_call>{"name": "f", "arguments": {</tool_call>', "hermes")
    ('<tool_call>{"name": "f", "arguments": {</tool_call>', [])
    """
    stream = ToolStream(parser, tools, limit)
    pieces = stream.feed(text) + stream.close()
    content = "".join(p.get("content", "") for p in pieces)
    calls = [{k: v for k, v in c.items() if k != "index"} for p in pieces for c in p.get("tool_calls", [])]
    return content or None, calls
