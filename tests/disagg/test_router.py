"""Disaggregated serving as a user runs it: a prefill instance, a decode instance and vllm-router in PD mode, three
processes on loopback. The oracle is one colocated server of the same model (greedy outputs must be equal); the
bytes each request moved are checked against the config's per-token cache size (the function inspect uses)."""
import json
import time

import httpx
import pytest


import hyperdecode as hd  # noqa: E402
from hyperdecode.model.loader import read_config  # noqa: E402
from hyperdecode.model.sizing import token_cache_bytes  # noqa: E402
from tests.serve.conftest import LiveServer, metric_values  # noqa: E402

from .conftest import need_pd, router, serve  # noqa: E402

need_pd()

LONG = ("Summarize the design of a disaggregated inference service: prefill instances compute prompts, decode "
        "instances stream tokens, and the cache moves between them over the network.")
MODELS = [("tiny-llama", "native"), ("tiny-glm5", "reference"), ("smollm2", "auto")]


def chat(url: str, model: str, content: str, stream: bool = False, max_tokens: int = 24) -> tuple[str, dict]:
    """(text, the response's extra fields: usage and kv_transfer_stats) of a greedy chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": stream}
    if not stream:
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        d = r.json()
        return d["choices"][0]["message"]["content"], d
    text, extra = "", {}
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            assert "error" not in d, d
            for c in d["choices"]:
                text += c["delta"].get("content") or ""
            extra.update({k: d[k] for k in ("usage", "kv_transfer_stats") if d.get(k)})
    return text, extra


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def trio(request, logs):
    model, decode_backend = request.param
    prefill = serve(logs, model, "kv_producer")
    decode = serve(logs, model, "kv_consumer", backend=decode_backend)
    front = router(logs, [prefill], [decode])
    colocated = LiveServer(hd.LLM(model, device="cpu", backend="reference"), max_batch=4, max_model_len=1024)
    yield model, prefill, decode, front, colocated
    colocated.stop()
    for p in (front, decode, prefill):
        p.stop()


def test_greedy_outputs_through_the_router_equal_a_colocated_server(trio):
    model, prefill, decode, front, colocated = trio
    per_token = token_cache_bytes(read_config(model), 4, index_keys="values")  # float32 caches
    prompts = [LONG, LONG + " Then list three risks.", "Hi!"]
    longest = 0
    for content in prompts:
        for stream in (False, True):
            want, _ = chat(colocated.url, model, content)
            got, extra = chat(front.url, model, content, stream=stream)
            assert got == want, (model, content, stream)
            usage, moved = extra["usage"], extra["kv_transfer_stats"]
            assert moved["bytes"] == per_token * (usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"])
            assert moved["transfer_s"] > 0 and moved["prefill_s"] > 0
            longest = max(longest, usage["prompt_tokens"])
    if model == "tiny-glm5":  # the decode side's DSA selected among transferred indexer keys
        assert longest > read_config(model).index_topk
    assert prefill.health()["held_rows"] == 0
    metrics = metric_values(httpx.get(decode.url + "/metrics").text)
    assert metrics["vllm:nixl_bytes_transferred_count"] >= len(prompts)
    assert metrics.get("vllm:nixl_num_failed_transfers_total", 0) == 0
    assert metrics["hyperdecode:pd_ttft_split_seconds_count|part=transfer"] >= len(prompts)
