"""A server with --speculative-config: the spec-decode counters move by what the requests report, and a streamed
speculative request gives the text of a plain one at temperature 0."""
import json

import httpx
import pytest

import hyperdecode as hd
from tests.serve.conftest import LiveServer, metric_values

COMP = "/v1/completions"
CHAT = "/v1/chat/completions"
PROMPT = "abc abc abc abc abc abc abc"  # repeats itself: n-gram drafts are accepted on the tiny model too


@pytest.fixture(scope="module")
def spec_server():
    s = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0), max_batch=4, max_model_len=512,
                   speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    yield s
    s.stop()


def stream_text(client, body):
    text, usage = "", None
    with client.stream("POST", COMP, json=dict(body, stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                text += chunk["choices"][0]["text"]
            if chunk.get("usage"):
                usage = chunk["usage"]
    return text, usage


def test_spec_counters_move_by_the_requests_stats(spec_server):
    with httpx.Client(base_url=spec_server.url, timeout=60) as c:
        before = metric_values(c.get("/metrics").text)
        usages = []
        for i in range(3):
            r = c.post(COMP, json={"model": "tiny-llama", "prompt": PROMPT * (i + 1), "max_tokens": 20,
                                   "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200
            usages.append(r.json()["usage"])
        after = metric_values(c.get("/metrics").text)
    spec = [u["spec_decode"] for u in usages]
    assert sum(s["num_accepted_tokens"] for s in spec) > 0
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["vllm:spec_decode_num_drafts_total"] == sum(s["num_drafts"] for s in spec)
    assert delta["vllm:spec_decode_num_draft_tokens_total"] == sum(s["num_draft_tokens"] for s in spec)
    assert delta["vllm:spec_decode_num_accepted_tokens_total"] == sum(s["num_accepted_tokens"] for s in spec)
    for pos in range(3):
        key = f"vllm:spec_decode_num_accepted_tokens_per_pos_total|position={pos}"
        assert delta.get(key, 0) == sum(s["accepted_per_pos"][pos] for s in spec if len(s["accepted_per_pos"]) > pos)
    for s in spec:
        assert s["mean_accepted_length"] == pytest.approx(1 + s["num_accepted_tokens"] / s["num_drafts"], abs=1e-3)
    # a step's tokens share its interval: every output token but the first is one inter-token latency
    assert delta["vllm:inter_token_latency_seconds_count"] == sum(u["completion_tokens"] - 1 for u in usages)


def test_streamed_speculative_text_equals_plain(spec_server):
    plain = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0), max_batch=4, max_model_len=512)
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    try:
        with httpx.Client(base_url=spec_server.url, timeout=60) as c:
            spec_text, spec_usage = stream_text(c, body)
        with httpx.Client(base_url=plain.url, timeout=60) as c:
            plain_text, plain_usage = stream_text(c, body)
    finally:
        plain.stop()
    assert spec_text == plain_text and spec_text
    assert spec_usage["completion_tokens"] == plain_usage["completion_tokens"] == 30
    assert spec_usage["spec_decode"]["num_drafts"] > 0 and "spec_decode" not in plain_usage


def test_bad_speculative_config_fails_the_load():
    from hyperdecode.errors import ConfigError
    with pytest.raises(ConfigError, match="MTP layer"):
        LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0), speculative_config={"method": "mtp",
                                                                                  "num_speculative_tokens": 2})
