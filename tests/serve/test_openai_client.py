"""The official openai client against a live server; text equals hd.LLM for the same seed."""
import asyncio

import pytest

import hyperdecode as hd


@pytest.fixture
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a color"}]


def test_chat_non_stream_equals_offline(client, offline):
    r = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=24, temperature=0.8,
                                       seed=11)
    expected = offline.chat(MESSAGES, max_tokens=24, temperature=0.8, seed=11)
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == expected.finish_reason
    assert r.usage.prompt_tokens == expected.stats.prompt_tokens
    assert r.usage.completion_tokens == expected.stats.output_tokens


def test_chat_stream_with_usage(client, offline):
    stream = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, max_tokens=20, temperature=1.0,
                                            seed=5, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    expected = offline.chat(MESSAGES, max_tokens=20, temperature=1.0, seed=5, ignore_eos=True)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_completions_stream_and_not(client, offline):
    kw = dict(model="tiny-llama", prompt="Once upon", max_tokens=16, temperature=0.7, seed=2)
    r = client.completions.create(**kw)
    expected = offline.generate("Once upon", max_tokens=16, temperature=0.7, seed=2)
    assert r.choices[0].text == expected.text
    streamed = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.text
    assert streamed[-1].usage.total_tokens == expected.stats.prompt_tokens + expected.stats.output_tokens


def test_stop_strings(client, offline):
    free = offline.generate("abc", max_tokens=40, temperature=1.0, seed=9, ignore_eos=True).text
    stop = free[8:10]
    r = client.completions.create(model="tiny-llama", prompt="abc", max_tokens=40, temperature=1.0, seed=9,
                                  stop=[stop], extra_body={"ignore_eos": True})
    assert r.choices[0].text == free[:free.find(stop)] and r.choices[0].finish_reason == "stop"


def test_models_route(client):
    import openai
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"
    with pytest.raises(openai.NotFoundError, match="the model 'gpt-4' does not exist"):
        client.models.retrieve("gpt-4")


def test_32_concurrent_streams(server, offline):
    import openai

    async def one(client, seed):
        stream = await client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": f"story {seed}"}], max_tokens=24,
            temperature=0.9, seed=seed, stream=True, extra_body={"ignore_eos": True})
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
            return await asyncio.gather(*(one(c, s) for s in range(32)))

    texts = asyncio.run(main())
    for seed, text in enumerate(texts):
        expected = offline.chat([{"role": "user", "content": f"story {seed}"}], max_tokens=24, temperature=0.9,
                                seed=seed, ignore_eos=True)
        assert text == expected.text
    assert server.engine.metrics.running._value.get() == 0


def test_api_key_is_enforced(llm):
    import openai
    from tests.serve.conftest import LiveServer
    s = LiveServer(hd.LLM("tiny-llama", device="cpu"), api_key="sekret", max_model_len=256)
    try:
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret", max_retries=0)
        assert good.completions.create(model="tiny-llama", prompt="a", max_tokens=2).choices
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.completions.create(model="tiny-llama", prompt="a", max_tokens=2)
        assert e.value.status_code == 401
    finally:
        s.stop()
