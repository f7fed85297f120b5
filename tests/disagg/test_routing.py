"""Many instances, one endpoint: two plain `hyperdecode serve` instances behind vllm-router's regular mode with the
cache-aware policy. A multi-turn conversation keeps reaching the instance that holds its prefix, which the usage's
cached_tokens shows on every turn after the first."""
import httpx
import pytest

from .conftest import need_pd, router, serve

need_pd()

MODEL = "tiny-llama"


def test_a_conversation_keeps_hitting_the_instance_with_its_prefix(logs):
    workers = [serve(logs, MODEL, name=f"worker-{i}") for i in range(2)]
    front = router(logs, workers=workers, policy="cache_aware")
    try:
        messages = [{"role": "system", "content": "You are a terse assistant for a routing test."}]
        cached = []
        for turn in range(5):
            messages.append({"role": "user", "content": f"Turn {turn}: tell me one more fact about caches."})
            r = httpx.post(front.url + "/v1/chat/completions", timeout=60,
                           json={"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 0})
            assert r.status_code == 200, r.text
            d = r.json()
            cached.append(d["usage"]["prompt_tokens_details"]["cached_tokens"])
            messages.append({"role": "assistant", "content": d["choices"][0]["message"]["content"]})
        assert cached[0] == 0 and all(c > 0 for c in cached[1:]), cached
        served = [w.health()["steps"] > 0 for w in workers]
        assert served.count(True) == 1, "the conversation was spread over both instances"
    finally:
        for p in (front, *workers):
            p.stop()
