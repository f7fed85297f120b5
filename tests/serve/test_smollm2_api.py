"""The API features on the embedded SmolLM2-135M-Instruct (the real tokenizer and chat template): 20 sampled
outputs (temperature 1) under a JSON-schema response_format all parse and validate; a conversation with tool calls
and tool messages renders through SmolLM2's own template (which knows no tools: they go in Hermes form)."""
import json

import jsonschema
import openai
import pytest

import hyperdecode as hd
from hyperdecode.engine.inputs import check_chat
from tests.serve.conftest import LiveServer

SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 20},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "languages": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
          "required": ["name", "age", "languages"], "additionalProperties": False}


@pytest.fixture(scope="module")
def smol():
    server = LiveServer(hd.LLM("smollm2", device="cpu", seed=0), max_batch=10, max_model_len=1024)
    yield server
    server.stop()


def test_twenty_sampled_outputs_validate_against_the_schema(smol):
    client = openai.OpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    messages = [{"role": "user", "content": "Describe a programmer as JSON with name, age and languages."}]
    texts = []
    for seed in (1, 2):
        r = client.chat.completions.create(model="smollm2", messages=messages, response_format=fmt, n=10,
                                           temperature=1.0, seed=seed, max_tokens=120)
        texts += [c.message.content for c in r.choices]
        assert all(c.finish_reason == "stop" for c in r.choices), [c.message.content for c in r.choices]
    assert len(texts) == 20
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 10  # sampled, not one answer twenty times


def test_json_object_outputs_parse_as_objects(smol):
    """response_format json_object: every sampled output that ends by itself is one JSON object (the grammar ends
    it there; one cut at max_tokens is the only other way out)."""
    client = openai.OpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    messages = [{"role": "user", "content": "Give a city and its country as a short JSON object."}]
    r = client.chat.completions.create(model="smollm2", messages=messages, response_format={"type": "json_object"},
                                       n=6, temperature=1.0, seed=3, max_tokens=160)
    finished = [c.message.content for c in r.choices if c.finish_reason == "stop"]
    assert len(finished) >= 4, [(c.finish_reason, c.message.content) for c in r.choices]
    assert all(isinstance(json.loads(text), dict) for text in finished)
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)


def test_tool_messages_render_through_smollm2s_template(smol):
    inputs = smol.engine.inputs
    messages = [{"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    text = inputs.tokenizer.decode(inputs.chat_prompt(check_chat(messages, tools)))
    assert text.startswith("<|im_start|>system\n") and "<tools>" in text and '"get_weather"' in text
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    assert "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
