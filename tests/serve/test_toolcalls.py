"""Tool-call parsers (hyperdecode/serve/toolcalls.py): each format whole and streamed, GLM's schema typing,
malformed calls kept as content, the stream adding up to the whole parse on random splits, and the parser a chat
template names (with the GLM-4.6 and DeepSeek-V3.1 templates as their models ship them, in tests/data)."""
import json
import random
import re
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hyperdecode.serve.toolcalls import (PARSERS, ToolStream, glm_value, new_call_id, parse_tool_calls,
                                         parser_for_template, parser_names)

DATA = Path(__file__).parent.parent / "data"
B, E = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CB, CE, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
    "options": {"type": "object"}, "zip": {"type": "string"}, "hours": {"type": "array", "items": {"type": "integer"}},
    "unit": {"enum": ["c", "f"]}, "note": {"type": ["string", "null"]}, "ratio": {"anyOf": [{"type": "number"}]}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


def fn(calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def glm(name, pairs, newlines=True):
    nl = "\n" if newlines else ""
    inner = "".join(f"<arg_key>{k}</arg_key>{nl}<arg_value>{v}</arg_value>{nl}" for k, v in pairs)
    return f"<tool_call>{name}{nl}{inner}</tool_call>"


def hermes(name, arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def ds3(name, arguments):
    return f"{CB}function{SEP}{name}\n```json\n{json.dumps(arguments, ensure_ascii=False)}\n```{CE}"


def ds31(name, arguments):
    return f"{CB}{name}{SEP}{json.dumps(arguments, ensure_ascii=False)}{CE}"


def streamed(text, parser, tools=TOOLS, rng=None, cuts=None):
    """The stream's content and calls for `text` fed in pieces (random cut points, or `cuts`)."""
    if cuts is None:
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
        if rng.random() < 0.2:
            cuts = list(range(1, len(text)))  # one character at a time
    stream = ToolStream(parser, tools)
    pieces = []
    for a, b in zip([0] + cuts, cuts + [len(text)]):
        pieces += stream.feed(text[a:b])
    pieces += stream.close()
    content = "".join(p.get("content", "") for p in pieces)
    deltas = [c for p in pieces for c in p.get("tool_calls", [])]
    return content or None, deltas, stream.called


WELL_FORMED = [  # (parser, text, content, [(name, arguments)])
    ("hermes", hermes("get_weather", {"city": "Beijing"}), None, [("get_weather", {"city": "Beijing"})]),
    ("hermes", "Let me check both.\n" + hermes("get_weather", {"city": "Paris"}) + "\n" +
     hermes("get_time", {}), "Let me check both.", [("get_weather", {"city": "Paris"}), ("get_time", {})]),
    ("hermes", hermes("get_weather", {"options": {"a": [1, {"b": None}], "c": "}{"}, "city": "上海 🌧"}), None,
     [("get_weather", {"options": {"a": [1, {"b": None}], "c": "}{"}, "city": "上海 🌧"})]),
    ("hermes", '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call>', None,
     [("get_time", {"tz": "UTC"})]),  # arguments as a string holding the object
    ("hermes", '<tool_call>{"name": "get_time"}</tool_call>', None, [("get_time", {})]),
    ("hermes", "No tools needed: 2 < 3 and <b>bold</b>.\n", "No tools needed: 2 < 3 and <b>bold</b>.\n", []),
    ("glm45", glm("get_weather", [("city", "Beijing")]), None, [("get_weather", {"city": "Beijing"})]),
    ("glm45", "I'll call it twice.\n" + glm("get_weather", [("city", "北京"), ("days", "3")]) + "\n" +
     glm("get_weather", [("city", "Shanghai"), ("metric", "true")]), "I'll call it twice.",
     [("get_weather", {"city": "北京", "days": 3}), ("get_weather", {"city": "Shanghai", "metric": True})]),
    ("glm47", glm("get_weather", [("city", "Beijing"), ("days", "2")], newlines=False) +
     glm("get_time", [], newlines=False), None, [("get_weather", {"city": "Beijing", "days": 2}), ("get_time", {})]),
    ("glm45", "<tool_call>get_time\n</tool_call>", None, [("get_time", {})]),
    ("deepseek_v3", B + ds3("get_weather", {"city": "Beijing"}) + E, None, [("get_weather", {"city": "Beijing"})]),
    ("deepseek_v3", "Checking.\n\n" + B + ds3("get_weather", {"city": "Paris", "options": {"x": [1, 2]}}) + "\n" +
     ds3("get_time", {"tz": "東京"}) + E, "Checking.",
     [("get_weather", {"city": "Paris", "options": {"x": [1, 2]}}), ("get_time", {"tz": "東京"})]),
    ("deepseek_v31", B + ds31("get_weather", {"city": "Beijing"}) + E, None, [("get_weather", {"city": "Beijing"})]),
    ("deepseek_v31", "Sure — two calls." + B + ds31("get_weather", {"city": "Zürich", "days": 1}) +
     ds31("get_time", {}) + E, "Sure — two calls.", [("get_weather", {"city": "Zürich", "days": 1}),
                                                     ("get_time", {})]),
]

MALFORMED = [  # (parser, text): no call, the text as content
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"\n</tool_call>'),  # bad JSON
    ("hermes", 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}'),  # no end tag
    ("hermes", '<tool_call>{"arguments": {"city": "Beijing"}}</tool_call>'),  # no name
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>'),  # arguments not an object
    ("hermes", '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>'),  # not JSON
    ("hermes", "<tool_call>get_weather(city='Beijing')</tool_call>"),  # not this format at all
    ("glm45", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing\n</tool_call>"),  # no </arg_value>
    ("glm45", "<tool_call>\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n</tool_call>"),  # no name
    ("glm45", "<tool_call>get_weather\ncity: Beijing\n</tool_call>"),  # no arg tags
    ("glm45", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>"),  # no end tag
    ("glm47", "<tool_call>get_weather<arg_key>city</arg_key>junk<arg_value>X</arg_value></tool_call>"),
    ("deepseek_v3", B + f"{CB}function{SEP}get_weather\n{{\"city\": \"Beijing\"}}{CE}" + E),  # no ```json fence
    ("deepseek_v3", B + f"{CB}tool{SEP}get_weather\n```json\n{{}}\n```{CE}" + E),  # type not "function"
    ("deepseek_v31", B + f"{CB}get_weather{SEP}{{\"city\": Beijing}}{CE}" + E),  # bad JSON
    ("deepseek_v31", B + f"{CB}get_weather{{\"city\": \"Beijing\"}}{CE}" + E),  # no separator
    ("deepseek_v31", "Let me see." + B + f"{CB}get_weather{SEP}{{\"city\": \"Bei"),  # cut off
    ("deepseek_v31", "Only the wrapper: " + B + E),
]


@pytest.mark.parametrize("parser,text,content,calls", WELL_FORMED)
def test_well_formed(parser, text, content, calls):
    got_content, got_calls = parse_tool_calls(text, parser, TOOLS)
    assert got_content == content
    assert fn(got_calls) == calls
    for c in got_calls:
        assert set(c) == {"id", "type", "function"} and c["type"] == "function"
        assert re.fullmatch(r"call_[0-9a-f]{24}", c["id"])
    assert len({c["id"] for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize("parser,text", MALFORMED)
def test_malformed_is_content(parser, text):
    assert parse_tool_calls(text, parser, TOOLS) == (text, [])
    content, deltas, called = streamed(text, parser, cuts=list(range(1, len(text))))
    assert (content, deltas, called) == (text, [], False)


def test_glm_schema_types():
    text = glm("get_weather", [("city", " New York "), ("days", "7"), ("metric", "false"), ("options", '{"a": [1]}'),
                               ("zip", "10001"), ("hours", "[1, 2]"), ("unit", "c"), ("note", "null"),
                               ("ratio", "0.5"), ("extra", "3"), ("other", "Paris"), ("quoted", '"x"')])
    content, calls = parse_tool_calls(text, "glm45", TOOLS)
    assert content is None
    assert fn(calls) == [("get_weather", {
        "city": " New York ", "days": 7, "metric": False, "options": {"a": [1]}, "zip": "10001", "hours": [1, 2],
        "unit": "c", "note": None, "ratio": 0.5, "extra": 3, "other": "Paris", "quoted": "x"})]


def test_glm_values_without_a_schema():
    text = glm("lookup", [("n", "12"), ("flag", "true"), ("q", "12 monkeys"), ("d", "2024-06-27")])
    _, calls = parse_tool_calls(text, "glm45", None)
    assert fn(calls) == [("lookup", {"n": 12, "flag": True, "q": "12 monkeys", "d": "2024-06-27"})]
    assert glm_value("12", {"type": "integer"}) == 12
    assert glm_value("twelve", {"type": "integer"}) == "twelve"  # does not decode: the text
    assert glm_value("12", {"type": "string"}) == "12"
    assert glm_value("[1", {"type": "array"}) == "[1"
    assert glm_value(" {\"k\": 1}\n", {"type": "object"}) == {"k": 1}
    assert glm_value("NaN", {"type": "number"}) == "NaN"  # JSON has no NaN
    assert glm_value("5", {"type": ["string", "integer"]}) == 5
    assert glm_value("x", {"type": ["string", "integer"]}) == "x"


def test_unknown_function_is_kept():
    _, calls = parse_tool_calls(hermes("send_mail", {"to": "a@b"}), "hermes", TOOLS)
    assert fn(calls) == [("send_mail", {"to": "a@b"})]


def test_good_and_bad_calls_mixed():
    bad = '<tool_call>{"name": "get_time", "arguments": {</tool_call>'
    text = "Two.\n" + hermes("get_weather", {"city": "Oslo"}) + "\n" + bad + "\nDone."
    content, calls = parse_tool_calls(text, "hermes", TOOLS)
    assert content == "Two." + bad + "\nDone."  # whitespace next to the good call is dropped, not next to the bad one
    assert fn(calls) == [("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("seed", range(40))
def test_stream_adds_up_to_the_whole_parse(seed):
    rng = random.Random(seed)
    for parser, text, _, _ in WELL_FORMED:
        content, calls = parse_tool_calls(text, parser, TOOLS)
        s_content, deltas, called = streamed(text, parser, rng=rng)
        assert s_content == content, (parser, text)
        assert fn(deltas) == fn(calls)
        assert [d["index"] for d in deltas] == list(range(len(calls)))
        assert called == bool(calls)
    for parser, text in MALFORMED:
        assert streamed(text, parser, rng=rng) == (text, [], False)


def test_stream_holds_back_only_what_may_be_a_marker():
    s = ToolStream("hermes", TOOLS)
    assert s.feed("Hello wor") == [{"content": "Hello wor"}]
    assert s.feed("ld <") == [{"content": "ld"}]  # the space may border a call, the "<" may begin one
    assert s.feed("b>x") == [{"content": " <b>x"}]
    assert s.feed(" <tool_c") == []
    assert s.feed('all>{"name": "get_time", "arguments": {}}') == []
    assert not s.called
    out = s.feed("</tool_call>\nBye")
    assert out[1] == {"content": "Bye"}
    [call] = out[0]["tool_calls"]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_time", "arguments": "{}"}
    assert s.called and s.close() == []


def test_finish_flushes_an_unfinished_call():
    s = ToolStream("glm45", TOOLS)
    assert s.feed("Text\n<tool_call>get_weather\n<arg_key>ci") == [{"content": "Text"}]
    assert s.close() == [{"content": "\n<tool_call>get_weather\n<arg_key>ci"}]
    assert not s.called
    s = ToolStream("deepseek_v31", TOOLS)
    assert s.feed("ok<｜tool▁ca") == [{"content": "ok"}]
    assert s.close() == [{"content": "<｜tool▁ca"}]


def test_plain_text_is_unchanged():
    for text in ["", " ", "  indented\n\nand trailing\n", "a <tool b", "</tool_call> stray"]:
        for parser in parser_names():
            assert parse_tool_calls(text, parser, None) == (text or None, [])
            assert streamed(text, parser, rng=random.Random(0)) == (text or None, [], False)


def test_names_and_errors():
    assert parser_names() == ["deepseek_v3", "deepseek_v31", "glm45", "glm47", "hermes"]
    assert PARSERS["glm47"] is PARSERS["glm45"]
    with pytest.raises(ValueError, match="unknown tool-call parser 'nope'"):
        ToolStream("nope", None)
    with pytest.raises(ValueError):
        parse_tool_calls("x", "nope", None)
    assert re.fullmatch(r"call_[0-9a-f]{24}", new_call_id()) and new_call_id() != new_call_id()


def test_parser_for_template():
    glm45 = (DATA / "glm45_chat_template.jinja").read_text(encoding="utf-8")
    ds31 = (DATA / "deepseek_v31_chat_template.jinja").read_text(encoding="utf-8")
    assert parser_for_template(glm45) == "glm45"
    assert parser_for_template(ds31) == "deepseek_v31"
    assert parser_for_template("{{- '<tool_call>' + tc.name -}}{% for k, v in _args.items() %}<arg_key>{{ k }}"
                               "</arg_key><arg_value>{{ v }}</arg_value>{% endfor %}</tool_call>") == "glm47"
    assert parser_for_template("{{'<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name']"
                               " + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```'}}") \
        == "deepseek_v3"
    assert parser_for_template('{{- "<tool_call>\\n{\\"name\\": \\"" }}{{ tool_call.name }}') == "hermes"
    assert parser_for_template("<tool_call>\n<function={{ tool_call.name }}>\n<parameter=x>") is None  # Qwen3-Coder
    assert parser_for_template("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert parser_for_template(None) is None and parser_for_template("") is None


def hf_env():
    """The sandbox chat templates render in, with transformers' tojson (it takes ensure_ascii; jinja2's does not)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        v, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    return env


def test_glm_template_round_trip():
    """What GLM's own template writes for an assistant's tool call parses back to the same call."""
    template = hf_env().from_string((DATA / "glm45_chat_template.jinja").read_text(encoding="utf-8"))
    arguments = {"city": "北京", "days": 2, "metric": True, "options": {"a": [1, None]}, "zip": "10001"}
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": {}}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 26}'},
                {"role": "tool", "tool_call_id": "call_2", "content": "12:00"}]
    text = template.render(messages=messages, tools=TOOLS, add_generation_prompt=True)
    assert text.startswith("[gMASK]<sop><|system|>\n# Tools")
    assert '<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n' in text
    assert "<|observation|>\n<tool_response>\n{\"temp\": 26}\n</tool_response>\n<tool_response>\n12:00" in text
    assert text.endswith("</tool_response><|assistant|>")
    turn = text.split("<|assistant|>")[1].split("<|observation|>")[0]
    assert turn.startswith("\n<think></think>\nChecking.\n<tool_call>")
    content, calls = parse_tool_calls(turn.removeprefix("\n<think></think>"), "glm45", TOOLS)
    assert content == "\nChecking."  # the text is kept as written; only the whitespace next to the calls goes
    assert fn(calls) == [("get_weather", arguments), ("get_time", {})]


def test_deepseek_v31_template_round_trip():
    template = hf_env().from_string((DATA / "deepseek_v31_chat_template.jinja").read_text(encoding="utf-8"))
    arguments = json.dumps({"city": "北京", "days": 2}, ensure_ascii=False)
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny"}]
    text = template.render(messages=messages, bos_token="", add_generation_prompt=True)
    assert text == (f"<｜User｜>Weather?<｜Assistant｜></think>{B}{CB}get_weather{SEP}{arguments}{CE}{E}"
                    "<｜end▁of▁sentence｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>")
    turn = text.split("<｜Assistant｜></think>")[1].split("<｜end▁of▁sentence｜>")[0]
    assert parse_tool_calls(turn, "deepseek_v31", TOOLS)[0] is None
    assert fn(parse_tool_calls(turn, "deepseek_v31", TOOLS)[1]) == [("get_weather", json.loads(arguments))]
