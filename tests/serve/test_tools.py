"""Tool calling through the server with the official client: the model's output forced (by a structured-output
choice grammar) into each supported format's tool-call text is parsed into the right `tool_calls`, streamed and
not, with finish_reason "tool_calls"; a malformed call comes back as content; tool_choice "required" and a named
function constrain the output to calls whose arguments validate against the tools' schemas; tool messages render
through the real GLM and DeepSeek templates and through a template that knows no tools (Hermes form)."""
import json
from pathlib import Path

import jsonschema
import openai
import pytest

from hyperdecode.engine.chat import hermes_messages, normalize_messages
from hyperdecode.engine.inputs import InputProcessor, check_chat
from hyperdecode.model.tokenizer import Tokenizer
from hyperdecode.serve.toolcalls import parser_for_template

DATA = Path(__file__).parents[1] / "data"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 9}},
           "required": ["city", "days"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["CET", "UTC"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "a forecast", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "the time", "parameters": TIME}}]
CALLS = [("get_weather", {"city": "Paris", "days": 3}), ("get_time", {"zone": "CET"})]
TEXTS = {
    "hermes": 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
              '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
    "glm45": "Let me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
             "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>\n<tool_call>get_time\n"
             "<arg_key>zone</arg_key>\n<arg_value>CET</arg_value>\n</tool_call>",
    "deepseek_v3": "Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
                   '{"city": "Paris", "days": 3}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>'
                   'get_time\n```json\n{"zone": "CET"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    "deepseek_v31": 'Let me check.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris", '
                    '"days": 3}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{"zone": "CET"}'
                    "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
}
MESSAGES = [{"role": "user", "content": "weather in Paris for 3 days, and the time?"}]


@pytest.fixture
def client(glm_server):
    yield openai.OpenAI(base_url=glm_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    glm_server.config.tool_call_parser = None


def forced(text):
    """The model's output forced to `text` (a one-choice grammar): what a model of that family would write."""
    return {"structured_outputs": {"choice": [text]}}


@pytest.mark.parametrize("parser", sorted(TEXTS))
def test_each_format_parses_into_tool_calls_streamed_and_not(client, glm_server, parser):
    glm_server.config.tool_call_parser = parser
    kwargs = dict(model="tiny-glm5", messages=MESSAGES, tools=TOOLS, max_tokens=400, temperature=0,
                  extra_body=forced(TEXTS[parser]))
    r = client.chat.completions.create(**kwargs)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == CALLS
    assert len({c.id for c in choice.message.tool_calls}) == 2
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": "", "id": None})
            entry["id"] = call.id or entry["id"]
            entry["name"] += (call.function.name or "") if call.function else ""
            entry["arguments"] += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content.strip() == "Let me check."
    assert [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)] == CALLS
    assert all(calls[i]["id"] for i in calls)


def test_a_malformed_call_comes_back_as_content(client, glm_server):
    glm_server.config.tool_call_parser = "hermes"
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    r = client.chat.completions.create(model="tiny-glm5", messages=MESSAGES, tools=TOOLS, max_tokens=200,
                                       temperature=0, extra_body=forced(text))
    assert r.choices[0].message.content == text and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-glm5", messages=MESSAGES, tools=TOOLS, max_tokens=200, temperature=0, stream=True,
        extra_body=forced(text)) if c.choices)
    assert streamed == text


def test_required_and_named_choices_constrain_the_calls(client):
    r = client.chat.completions.create(model="tiny-glm5", messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                       max_tokens=300, temperature=1.0, seed=4)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and calls
    schemas = {"get_weather": WEATHER, "get_time": TIME}
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    named = client.chat.completions.create(model="tiny-glm5", messages=MESSAGES, tools=TOOLS, max_tokens=200,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                                           temperature=1.0, seed=5)
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME)


def test_tool_choice_none_parses_nothing_and_bad_choices_are_400s(client, glm_server):
    glm_server.config.tool_call_parser = "hermes"
    r = client.chat.completions.create(model="tiny-glm5", messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                       max_tokens=200, temperature=0, extra_body=forced(TEXTS["hermes"]))
    assert r.choices[0].message.content == TEXTS["hermes"] and not r.choices[0].message.tool_calls
    for choice, param in ([{"type": "function", "function": {"name": "nope"}}, "tool_choice"],
                          ["sometimes", "tool_choice"]):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny-glm5", messages=MESSAGES, tools=TOOLS, tool_choice=choice)
        assert e.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-glm5", messages=MESSAGES, tools=[{"type": "function"}])
    assert e.value.body["param"] == "tools[0]"


CONVERSATION = [
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "days": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"forecast": "sunny"}'},
]


def render(template, messages=CONVERSATION, tools=TOOLS):
    tok = Tokenizer.byte_level(chat_template=template)
    inputs = InputProcessor(tok, vocab_size=259, eos_ids=[], max_model_len=10 ** 5)
    return tok.decode(inputs.chat_prompt(check_chat(messages, tools)))


def test_tool_messages_render_through_the_glm_template():
    template = (DATA / "glm45_chat_template.jinja").read_text()
    assert parser_for_template(template) == "glm45"
    text = render(template)
    assert '"name": "get_weather"' in text  # the tools listed in the system turn
    assert "<tool_call>get_weather" in text and "<arg_key>city</arg_key>" in text and "<arg_value>Paris" in text
    assert "<|observation|>" in text and '{"forecast": "sunny"}' in text
    assert text.rstrip().endswith("<|assistant|>")


def test_tool_messages_render_through_the_deepseek_template():
    template = (DATA / "deepseek_v31_chat_template.jinja").read_text()
    assert parser_for_template(template) == "deepseek_v31"
    text = render(template)
    assert "get_weather<｜tool▁sep｜>" in text and '{"forecast": "sunny"}' in text  # its own call form
    assert "<tools>" in text and "<tool_call>" not in text  # the tools listed, no foreign call form taught


def test_a_template_without_tools_gets_them_in_hermes_form():
    text = render(Tokenizer.byte_level().chat_template)
    assert "<tools>" in text and '"get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>' in text
    assert "<tool_response>\n{\"forecast\": \"sunny\"}\n</tool_response>" in text
    assert hermes_messages(normalize_messages([{"role": "user", "content": "x"}])) == [
        {"role": "user", "content": "x"}]


@pytest.mark.parametrize("template", ["glm45_chat_template.jinja", None])
def test_content_as_text_parts_renders_as_the_joined_string(template):
    """OpenAI's list-of-parts content (what many SDKs send) gives the same prompt as the plain string, in every
    role that carries text; a non-text part is a 400 naming the message."""
    text = (DATA / template).read_text() if template else Tokenizer.byte_level().chat_template
    parts = [{"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
             CONVERSATION[0] | {"content": [{"type": "text", "text": "weather in "}, {"type": "text", "text": "Paris?"}]},
             *CONVERSATION[1:2],
             CONVERSATION[2] | {"content": [{"type": "text", "text": '{"forecast": "sunny"}'}]}]
    plain = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    assert render(text, parts) == render(text, plain)
    with pytest.raises(Exception, match="only text content parts") as e:
        render(text, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert e.value.param == "messages[0].content"
