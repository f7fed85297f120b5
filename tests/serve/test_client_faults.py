"""The faults agent clients met (issue 31), each against a live server on loopback: streamed forced tool calls in
the chunk format clients merge (one entry per choice and chunk, the role first), no 500 for a valid request (a
top_p below float32's smallest number, Responses' `text` of the wrong shape), forced tool calls that end (objects
closed to their listed keys, "required" bounded, parallel_tool_calls honoured), the combinations clients send, and
the smaller field rules (whole-number floats for integers, Responses' own field names in its errors, logit_bias
ids in the vocabulary, /tokenize counting the tools and taking an empty prompt, Responses items checked)."""
import json

import httpx
import openai
import pytest

import hyperdecode as hd
from tests.serve.conftest import LiveServer

OPEN_WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}  # not strict
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                           "parameters": OPEN_WEATHER}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def smol():
    """SmolLM2 (a real model: a forced call it writes is a real test of the grammar's end)."""
    s = LiveServer(hd.LLM("smollm2", device="cpu", seed=0), max_batch=4, max_model_len=2048)
    yield s
    s.stop()


@pytest.fixture
def http(smol):
    with httpx.Client(base_url=smol.url, timeout=120) as c:
        yield c


@pytest.fixture
def client(smol):
    return openai.OpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def sse_chunks(http, body):
    with http.stream("POST", "/v1/chat/completions", json={"model": "smollm2", "stream": True, **body}) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("choice, n", [("required", 1), (NAMED, 1), (NAMED, 2)])
def test_streamed_forced_tool_calls_use_the_chunk_format_clients_merge(http, client, choice, n):
    chunks = sse_chunks(http, dict(messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=120, n=n))
    for chunk in chunks:  # never one index twice in a chunk (openai-python asserted, the Agents SDK warned)
        indexes = [c["index"] for c in chunk["choices"]]
        assert len(indexes) == len(set(indexes)), chunk
    for index in range(n):
        mine = [c for chunk in chunks for c in chunk["choices"] if c["index"] == index]
        assert mine[0]["delta"].get("role") == "assistant" and "tool_calls" in mine[0]["delta"]
        assert mine[-1]["finish_reason"] == "tool_calls" and all(c["finish_reason"] is None for c in mine[:-1])
    with client.chat.completions.stream(model="smollm2", messages=ASK, tools=TOOLS, tool_choice=choice,
                                        max_tokens=120, n=n) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert [c.finish_reason for c in final.choices] == ["tool_calls"] * n
    for c in final.choices:
        assert c.message.tool_calls[0].function.name == "get_weather"
        assert set(json.loads(c.message.tool_calls[0].function.arguments)) == {"city"}


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": ASK, "max_tokens": 4}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 4}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 4}),
])
def test_a_top_p_below_float32_s_smallest_number_still_samples(http, path, body):
    for top_p in (5e-324, 1e-45, 1e-300):
        r = http.post(path, json={"model": "smollm2", "temperature": 1.0, "top_p": top_p, "seed": 1, **body})
        assert r.status_code == 200, r.text
    # a one-token nucleus samples the top token: the greedy text
    chat = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "max_tokens": 6,
                                                   "temperature": 1.0, "top_p": 5e-324, "seed": 3}).json()
    greedy = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "max_tokens": 6,
                                                     "temperature": 0}).json()
    assert chat["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]


@pytest.mark.parametrize("text", [{"format": "json"}, {"format": True}, {"format": [None]}, "x", {"format": {}},
                                  {"format": {"type": "json_schema"}}])
def test_responses_text_of_the_wrong_shape_is_a_400_naming_it(http, text):
    r = http.post("/v1/responses", json={"model": "smollm2", "input": "hi", "text": text, "max_output_tokens": 4})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] in ("text", "text.format")


def test_forced_tool_calls_end_with_only_the_listed_keys_and_a_bounded_count(client):
    named = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, tool_choice=NAMED,
                                           max_tokens=200)
    assert named.choices[0].finish_reason == "tool_calls"
    assert set(json.loads(named.choices[0].message.tool_calls[0].function.arguments)) == {"city"}
    one = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, max_tokens=200)
    assert one.choices[0].finish_reason == "tool_calls" and len(one.choices[0].message.tool_calls) == 1
    many = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, tool_choice="required",
                                          max_tokens=1000)
    assert many.choices[0].finish_reason == "tool_calls" and 1 <= len(many.choices[0].message.tool_calls) <= 16
    assert many.choices[0].message.content is None


def test_required_tools_with_a_response_format_call_the_tool(client, http):
    """What the Agents SDK sends for an output_type beside required tools: the call is this turn's output."""
    r = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, tool_choice="required",
                                       response_format={"type": "json_object"}, max_tokens=200)
    assert r.choices[0].finish_reason == "tool_calls"
    flat = [{"type": "function", "name": "get_weather", "parameters": OPEN_WEATHER}]
    r = http.post("/v1/responses", json={"model": "smollm2", "input": "weather in Paris?", "tools": flat,
                                         "tool_choice": "required", "max_output_tokens": 200,
                                         "text": {"format": {"type": "json_schema", "name": "w", "schema": {
                                             "type": "object", "properties": {"ok": {"type": "boolean"}}}}}})
    assert r.status_code == 200 and r.json()["output"][0]["type"] == "function_call", r.text


def test_whole_number_floats_are_integers(http):
    r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "max_tokens": 4.0, "n": 2.0,
                                                "seed": 7.0, "top_k": 3.0, "logprobs": True, "top_logprobs": 2.0,
                                                "temperature": 0.5})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text
    r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "hi", "max_tokens": 3.0, "logprobs": 1.0})
    assert r.status_code == 200, r.text
    r = http.post("/v1/responses", json={"model": "smollm2", "input": "hi", "max_output_tokens": 3.0})
    assert r.status_code == 200, r.text
    r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "max_tokens": 4.5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_responses_errors_name_responses_fields(http):
    def param(body):
        r = http.post("/v1/responses", json={"model": "smollm2", **body})
        assert r.status_code == 400, r.text
        return r.json()["error"]
    e = param({"input": "hi", "max_output_tokens": 0})
    assert e["param"] == "max_output_tokens" and "'max_output_tokens'" in e["message"]
    assert param({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"type": "nope"}}},
                  "max_output_tokens": 4})["param"] == "text.format"
    e = param({"input": "word " * 3000, "max_output_tokens": 4})
    assert e["param"] == "input" and "messages" not in e["message"]


def test_logit_bias_outside_the_vocabulary_is_a_400(http):
    r = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "logit_bias": {"999999": 5},
                                                "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


def test_tokenize_counts_the_tools_and_takes_an_empty_prompt(http):
    counted = http.post("/tokenize", json={"messages": ASK, "tools": TOOLS}).json()["count"]
    chat = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "tools": TOOLS,
                                                   "max_tokens": 1}).json()
    assert counted == chat["usage"]["prompt_tokens"] > http.post("/tokenize", json={"messages": ASK}).json()["count"]
    assert http.post("/tokenize", json={"prompt": ""}).json() == {"tokens": [], "count": 0, "max_model_len": 2048}


@pytest.mark.parametrize("item, param", [
    ({"type": "function_call_output"}, "input[0].call_id"),
    ({"type": "function_call_output", "call_id": "c1"}, "input[0].output"),
    ({"type": "function_call", "call_id": "c1", "name": "f"}, "input[0].arguments"),
    ({"type": "message", "content": "hi"}, "input[0].role"),
    ({"role": "user"}, "input[0].content"),
    ("hi", "input[0]"),
])
def test_responses_items_missing_their_fields_are_a_400(http, item, param):
    r = http.post("/v1/responses", json={"model": "smollm2", "input": [item], "max_output_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
