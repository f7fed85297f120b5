"""The Responses API with the official client: a two-step tool loop (the model's output forced into a call, the
call's output sent back, a text answer), streamed events in order, structured output through text.format, and
clear 400s for what is not supported."""
import json

import jsonschema
import openai
import pytest

TOOL = {"type": "function", "name": "get_weather", "description": "a forecast",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                       "required": ["city"], "additionalProperties": False}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def client(glm_server):
    glm_server.config.tool_call_parser = "hermes"
    yield openai.OpenAI(base_url=glm_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    glm_server.config.tool_call_parser = None


def test_two_step_tool_loop(client):
    first = client.responses.create(model="tiny-glm5", input="What is the weather in Paris?",
                                    instructions="Use the tools.", tools=[TOOL], max_output_tokens=200,
                                    temperature=0, extra_body={"structured_outputs": {"choice": [CALL_TEXT]}})
    assert first.status == "completed"
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    second = client.responses.create(
        model="tiny-glm5", instructions="Use the tools.", tools=[TOOL], max_output_tokens=8, temperature=0,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        extra_body={"ignore_eos": True})
    assert second.output[0].type == "message" and second.output_text
    assert second.usage.input_tokens > first.usage.input_tokens and second.usage.output_tokens == 8
    assert second.status == "incomplete" and second.incomplete_details.reason == "max_output_tokens"


def test_a_named_tool_choice_forces_the_call(client):
    r = client.responses.create(model="tiny-glm5", input="weather?", tools=[TOOL], max_output_tokens=100,
                                tool_choice={"type": "function", "name": "get_weather"}, temperature=1.0,
                                extra_body={"seed": 3})
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), TOOL["parameters"])


def test_streamed_events(client):
    kinds, text, last = [], "", None
    with client.responses.stream(model="tiny-glm5", input="hello", max_output_tokens=6, temperature=0) as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
            last = ev
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert "response.output_text.done" in kinds and "response.output_item.done" in kinds
    assert last.response.output_text == text and last.response.usage.output_tokens == 6
    plain = client.responses.create(model="tiny-glm5", input="hello", max_output_tokens=6, temperature=0)
    assert plain.output_text == text
    calls = []
    with client.responses.stream(model="tiny-glm5", input="weather?", tools=[TOOL], max_output_tokens=200,
                                 temperature=0, extra_body={"structured_outputs": {"choice": [CALL_TEXT]}}) as s:
        for ev in s:
            if ev.type == "response.output_item.done" and ev.item.type == "function_call":
                calls.append((ev.item.name, json.loads(ev.item.arguments)))
    assert calls == [("get_weather", {"city": "Paris"})]


def test_structured_text_format(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = client.responses.create(model="tiny-glm5", input="json please", max_output_tokens=40, temperature=1.0,
                                text={"format": {"type": "json_schema", "name": "answer", "schema": schema}})
    jsonschema.validate(json.loads(r.output_text), schema)


def test_unsupported_fields_are_400s(client):
    for extra, param in (({"previous_response_id": "resp_1"}, "previous_response_id"), ({"bogus": 1}, "bogus")):
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="tiny-glm5", input="x", extra_body=extra)
        assert e.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny-glm5", input=[{"type": "image", "url": "x"}])
    assert e.value.body["param"] == "input[0].type"
