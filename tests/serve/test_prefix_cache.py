"""Prefix caching through the server: a 5-turn chat with the official client gives the same answers with the cache
on and off; each turn's usage.prompt_tokens_details.cached_tokens is the prefix it shares with what the last turn
computed; vLLM's prefix-cache counters add up to the requests' figures."""
import httpx
import pytest

import hyperdecode as hd
from hyperdecode.engine.prefix import common_prefix
from tests.serve.conftest import LiveServer, metric_values


@pytest.fixture(scope="module")
def servers():
    on = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0), max_batch=2, max_model_len=1024)
    off = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0, enable_prefix_caching=False), max_batch=2,
                     max_model_len=1024)
    yield on, off
    on.stop()
    off.stop()


def chat(server, turns=5):
    import openai
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "system", "content": "you are a terse agent " * 8}]
    answers, cached, prompts = [], [], []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"step {turn}: list the files, then read file {turn}"})
        r = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
        answers.append(r.choices[0].message.content)
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
        prompts.append(list(messages))
        messages.append({"role": "assistant", "content": answers[-1]})
    return answers, cached, prompts


def test_multi_turn_chat_equals_no_cache_and_reports_cached_tokens(servers):
    on, off = servers
    answers, cached, prompts = chat(on)
    plain, none, _ = chat(off)
    assert answers == plain and none == [0] * 5
    offline = hd.LLM("tiny-llama", device="cpu", seed=0)
    ids = [offline.chat_prompt(m) for m in prompts]
    outputs = [offline.chat(m, max_tokens=12, temperature=0, ignore_eos=True).token_ids for m in prompts]
    expected = [0] + [min(common_prefix(ids[k], ids[k - 1] + outputs[k - 1][:-1]), len(ids[k]) - 1)
                      for k in range(1, 5)]
    assert cached == expected and all(c > 0 for c in cached[1:])
    with httpx.Client(base_url=on.url, timeout=30) as c:
        m = metric_values(c.get("/metrics").text)
    assert m["vllm:prefix_cache_hits_total"] == sum(cached)
    assert m["vllm:prefix_cache_queries_total"] == sum(len(x) for x in ids)
    assert 0 <= m["vllm:kv_cache_usage_perc"] <= 1
