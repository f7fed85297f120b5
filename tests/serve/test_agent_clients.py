"""The clients agent builders run, against a live server on loopback (SmolLM2, CPU): openai-python's `stream()` and
`.parse()` helpers with tools and n; the OpenAI Agents SDK with a function tool over Responses and over Chat
Completions (strict_feature_validation on), streamed, and with an output_type beside required tools; LangChain's
ChatOpenAI `invoke`, `stream`, `bind_tools` (default and strict, every tool_choice form) and
`with_structured_output` (each method). Tracing is off: nothing leaves the machine."""
import asyncio
import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

import hyperdecode as hd
from tests.serve.conftest import LiveServer

agents = pytest.importorskip("agents")
langchain_openai = pytest.importorskip("langchain_openai")
agents.set_tracing_disabled(True)

CITIES = ["Paris", "Rome", "Oslo"]


class Weather(BaseModel):
    """The weather in a city."""
    city: Literal["Paris", "Rome", "Oslo"]
    days: int = Field(ge=1, le=7)


class Report(BaseModel):
    sunny: bool
    city: Literal["Paris", "Rome", "Oslo"]


@pytest.fixture(scope="module")
def smol():
    s = LiveServer(hd.LLM("smollm2", device="cpu", seed=0), max_batch=4, max_model_len=2048)
    yield s
    s.stop()


@pytest.fixture
def client(smol):
    return openai.OpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0, timeout=120)


ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]


def test_openai_stream_and_parse_helpers_with_tools_and_n(client):
    tool = openai.pydantic_function_tool(Weather, name="get_weather")
    # one call per choice (SmolLM2 otherwise lists up to 16 calls, which 120 tokens may not hold)
    with client.chat.completions.stream(model="smollm2", messages=ASK, tools=[tool], tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=120, n=2) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    for choice in final.choices:
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and isinstance(call.function.parsed_arguments, Weather)
    parsed = client.chat.completions.parse(model="smollm2", messages=ASK, response_format=Report, max_tokens=60, n=2)
    assert [type(c.message.parsed) for c in parsed.choices] == [Report, Report]
    called = client.chat.completions.parse(model="smollm2", messages=ASK, tools=[tool],
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           max_tokens=60)
    assert isinstance(called.choices[0].message.tool_calls[0].function.parsed_arguments, Weather)


def weather_agent(smol, api: str, calls: list, output_type=None, strict: bool = True):
    """An agent with one function tool that records its calls, over the Responses or the Chat Completions API."""
    @agents.function_tool
    def get_weather(city: Literal["Paris", "Rome", "Oslo"], days: int) -> str:
        """The forecast for a city over some days."""
        calls.append((city, days))
        return f"sunny in {city} for {days} days"

    async_client = openai.AsyncOpenAI(base_url=smol.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    if api == "responses":
        model = agents.OpenAIResponsesModel(model="smollm2", openai_client=async_client)
    else:
        model = agents.OpenAIChatCompletionsModel(model="smollm2", openai_client=async_client,
                                                  strict_feature_validation=strict)
    settings = agents.ModelSettings(tool_choice="required", max_tokens=80, temperature=0)
    return agents.Agent(name="weather", instructions="Answer with the tool's forecast.", tools=[get_weather],
                        model=model, model_settings=settings, output_type=output_type)


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_agents_sdk_tool_loop(smol, api):
    """The required first turn calls the tool; the SDK then answers from its output (tool_choice reset to auto)."""
    calls = []
    result = agents.Runner.run_sync(weather_agent(smol, api, calls), "Weather in Paris for 3 days?", max_turns=4)
    assert calls and calls[0][0] in CITIES and 1 <= calls[0][1]
    assert isinstance(result.final_output, str)
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_agents_sdk_run_streamed_and_output_type_beside_required_tools(smol, api):
    calls = []
    agent = weather_agent(smol, api, calls, output_type=Report)

    async def run():
        streamed = agents.Runner.run_streamed(agent, "Is it sunny in Paris for 3 days?", max_turns=4)
        events = [event.type async for event in streamed.stream_events()]
        return streamed, events

    streamed, events = asyncio.run(run())
    assert calls and "raw_response_event" in events and "run_item_stream_event" in events
    assert isinstance(streamed.final_output, Report) and streamed.final_output.city in CITIES


def chat_model(smol, **kwargs):
    return langchain_openai.ChatOpenAI(model="smollm2", base_url=smol.url + "/v1", api_key="unused", temperature=0,
                                       max_tokens=80, max_retries=0, timeout=120, **kwargs)


def test_langchain_invoke_and_stream(smol):
    llm = chat_model(smol)
    answer = llm.invoke("What is the capital of France?")
    assert isinstance(answer.content, str) and answer.content and answer.response_metadata["finish_reason"]
    chunks = list(llm.stream("What is the capital of France?"))
    assert "".join(c.content for c in chunks) == answer.content
    assert chunks[-1].response_metadata.get("finish_reason") in ("stop", "length") or \
        any(c.response_metadata.get("finish_reason") for c in chunks)


def get_weather(city: Literal["Paris", "Rome", "Oslo"], days: int) -> str:
    """The forecast for a city over some days."""
    return f"sunny in {city}"


@pytest.mark.parametrize("strict", [None, True])
@pytest.mark.parametrize("tool_choice", ["any", "required", "get_weather",
                                         {"type": "function", "function": {"name": "get_weather"}}, True])
def test_langchain_bind_tools_every_forced_choice(smol, tool_choice, strict):
    bound = chat_model(smol).bind_tools([get_weather], tool_choice=tool_choice, strict=strict)
    message = bound.invoke("What will the weather be in Paris for the next 3 days?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather", message
    assert set(message.tool_calls[0]["args"]) <= {"city", "days"}
    assert message.response_metadata["finish_reason"] == "tool_calls"
    streamed = list(bound.stream("What will the weather be in Paris for the next 3 days?"))
    merged = streamed[0]
    for chunk in streamed[1:]:
        merged = merged + chunk
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather"
    assert merged.response_metadata.get("finish_reason") == "tool_calls"


def test_langchain_bind_tools_auto_and_none(smol):
    for choice in ("auto", "none"):
        message = chat_model(smol).bind_tools([get_weather], tool_choice=choice).invoke("Hello!")
        assert message.response_metadata["finish_reason"] in ("stop", "length", "tool_calls"), choice
        if choice == "none":
            assert not message.tool_calls


@pytest.mark.parametrize("method", ["function_calling", "json_mode", "json_schema"])
def test_langchain_with_structured_output_each_method(smol, method):
    prompt = "Is it sunny in Paris? Answer in JSON with the keys sunny (a boolean) and city."
    structured = chat_model(smol).with_structured_output(Report, method=method)
    if method == "json_mode":  # json_mode asks for any JSON object: the schema is the prompt's job
        raw = chat_model(smol).with_structured_output(None, method="json_mode").invoke(prompt)
        assert isinstance(raw, dict)
        return
    report = structured.invoke(prompt)
    assert isinstance(report, Report) and report.city in CITIES
    with_raw = chat_model(smol).with_structured_output(Report, method=method, include_raw=True).invoke(prompt)
    assert with_raw["parsing_error"] is None and isinstance(with_raw["parsed"], Report)
    assert json.loads(json.dumps(with_raw["parsed"].model_dump())) == with_raw["parsed"].model_dump()
