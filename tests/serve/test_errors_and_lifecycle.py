"""Bad input gets the right 4xx with the OpenAI envelope; cancellation, deadlines, queue limits, health, metrics."""
import asyncio
import json
import time

import httpx
import pytest

import hyperdecode as hd
from tests.serve.conftest import LiveServer, metric_values

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
M = [{"role": "user", "content": "hi"}]
OK_CHAT = {"model": "tiny-llama", "messages": M, "max_tokens": 3}

BAD = [  # (path, body (dict or raw str), status, param or None, text in the message)
    (CHAT, "{not json", 400, None, "not valid JSON"),
    (CHAT, "[1, 2]", 400, None, "JSON object"),
    (CHAT, {"messages": M}, 400, "model", "'model' is required"),
    (CHAT, {"model": "gpt-9", "messages": M}, 404, "model", "does not exist"),
    (CHAT, {"model": "tiny-llama", "messages": []}, 400, "messages", "non-empty"),
    (CHAT, {"model": "tiny-llama"}, 400, "messages", "non-empty"),
    (CHAT, {"model": "tiny-llama", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", "role"),
    (CHAT, {"model": "tiny-llama", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "string"),
    (CHAT, {**OK_CHAT, "max_tokens": -1}, 400, "max_tokens", "at least 1"),
    (CHAT, {**OK_CHAT, "max_tokens": "ten"}, 400, "max_tokens", "integer"),
    (CHAT, {**OK_CHAT, "max_tokens": 10 ** 9}, 400, "messages", "maximum context length is 1024 tokens"),
    (CHAT, {**OK_CHAT, "temperature": 5}, 400, "temperature", "[0, 2]"),
    (CHAT, {**OK_CHAT, "temperature": "hot"}, 400, "temperature", "number"),
    (CHAT, {**OK_CHAT, "top_p": 0}, 400, "top_p", "(0, 1]"),
    (CHAT, {**OK_CHAT, "top_k": -5}, 400, "top_k", "top_k"),
    (CHAT, {**OK_CHAT, "n": 99}, 400, "n", "[1, 16]"),
    (CHAT, {**OK_CHAT, "seed": 1.5}, 400, "seed", "integer"),
    (CHAT, {**OK_CHAT, "stop": [""]}, 400, "stop", "non-empty"),
    (CHAT, {**OK_CHAT, "stream": "yes"}, 400, "stream", "boolean"),
    (CHAT, {**OK_CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options", "stream=true"),
    (CHAT, {**OK_CHAT, "tools": [{"type": "function"}]}, 400, "tools[0]", "must be"),
    (CHAT, {**OK_CHAT, "tool_choice": "required"}, 400, "tool_choice", "needs 'tools'"),
    (CHAT, {**OK_CHAT, "logprobs": "yes"}, 400, "logprobs", "boolean"),
    (CHAT, {**OK_CHAT, "response_format": {"type": "xml"}}, 400, "response_format", "json_schema"),
    (CHAT, {**OK_CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"pattern": "("}}}}}}, 400, "response_format", "grammar is invalid"),
    (CHAT, {**OK_CHAT, "presence_penalty": 2.5}, 400, "presence_penalty", "must be a number in [-2, 2]"),
    (CHAT, {**OK_CHAT, "request_timeout": -1}, 400, "request_timeout", "positive"),
    (COMP, {"model": "tiny-llama", "prompt": ""}, 400, "prompt", "non-empty"),
    (COMP, {"model": "tiny-llama", "prompt": [1, "a"]}, 400, "prompt", "token ids"),
    (COMP, {"model": "tiny-llama", "prompt": [999999]}, 400, "prompt", "token ids must be in"),
    (COMP, {"model": "tiny-llama", "prompt": "x" * 2000, "max_tokens": 5}, 400, "prompt", "maximum context length"),
    (COMP, {"model": "tiny-llama", "prompt": "x", "echo": "yes"}, 400, "echo", "boolean"),
    (COMP, {"model": "tiny-llama", "prompt": ["ok", ["a"]]}, 400, "prompt", "token ids"),
    (COMP, {"model": "tiny-llama", "prompt": "x", "best_of": 3}, 400, "best_of", "not supported"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens", "token ids"),
    ("/tokenize", {"nothing": 1}, 400, "prompt", "required"),
]


@pytest.mark.parametrize("path, body, status, param, text", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_gets_4xx_envelope(http, path, body, status, param, text):
    raw = body if isinstance(body, str) else json.dumps(body)
    r = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and text in err["message"]
    assert http.post(CHAT, json=OK_CHAT).status_code == 200  # and the server keeps serving


def test_routes(http):
    assert http.get("/health").status_code == 200
    assert http.get("/version").json()["version"] == hd.__version__
    toks = http.post("/tokenize", json={"prompt": "hello"}).json()
    assert toks["count"] == 5 and http.post("/detokenize", json={"tokens": toks["tokens"]}).json()["prompt"] == "hello"
    assert http.post("/tokenize", json={"messages": M}).json()["count"] > 5
    r = http.post(CHAT, json=OK_CHAT, headers={"x-request-id": "req-42"})
    assert r.json()["id"] == "req-42" and r.headers["x-request-id"] == "req-42"


def test_disconnect_cancels_within_a_step(server):
    before = metric_values(httpx.get(server.url + "/metrics").text)
    steps_before = server.engine.steps
    body = {"model": "tiny-llama", "prompt": "go", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        with c.stream("POST", COMP, json=body) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(10)]
            assert sum(line.startswith("data: ") for line in got) >= 4
    deadline = time.monotonic() + 5
    while server.engine.metrics.running._value.get() != 0:
        assert time.monotonic() < deadline, "the request kept running after the client left"
        time.sleep(0.005)
    after = metric_values(httpx.get(server.url + "/metrics").text)
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert generated < 1000 and server.engine.steps - steps_before < 1000
    assert after["vllm:request_success_total|finished_reason=abort"] == \
        before.get("vllm:request_success_total|finished_reason=abort", 0) + 1
    time.sleep(0.05)
    assert metric_values(httpx.get(server.url + "/metrics").text)["vllm:generation_tokens_total"] == \
        after["vllm:generation_tokens_total"]  # nothing more was generated for it


def test_deadline_ends_with_clear_error(http):
    r = http.post(COMP, json={"model": "tiny-llama", "prompt": "go", "max_tokens": 1000, "ignore_eos": True,
                              "request_timeout": 0.02})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "deadline_exceeded" and "deadline" in r.json()["error"]["message"]
    with http.stream("POST", COMP, json={"model": "tiny-llama", "prompt": "go", "max_tokens": 1000,
                                         "ignore_eos": True, "stream": True, "request_timeout": 0.02}) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "deadline_exceeded"


def test_metrics_counters_match_requests(server, http):
    before = metric_values(http.get("/metrics").text)
    usages = []
    for i in range(5):
        r = http.post(COMP, json={"model": "tiny-llama", "prompt": "count " * (i + 1), "max_tokens": 4 + i,
                                  "ignore_eos": True})
        usages.append(r.json()["usage"])
    after = metric_values(http.get("/metrics").text)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["vllm:prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    assert delta["vllm:generation_tokens_total"] == sum(u["completion_tokens"] for u in usages)
    assert delta["vllm:request_success_total|finished_reason=length"] == 5
    assert delta["vllm:e2e_request_latency_seconds_count"] == 5
    assert delta["vllm:time_to_first_token_seconds_count"] == 5
    assert delta["vllm:inter_token_latency_seconds_count"] == sum(u["completion_tokens"] - 1 for u in usages)
    assert "vllm:inter_token_latency_seconds_bucket|le=0.0005" in after  # sub-millisecond resolution


def test_full_queue_gets_429_with_retry_after():
    s = LiveServer(hd.LLM("tiny-llama", device="cpu"), max_batch=1, max_queue=1, max_model_len=1024)

    async def fire():
        async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
            body = {"model": "tiny-llama", "prompt": "x", "max_tokens": 600, "ignore_eos": True}
            return await asyncio.gather(*(c.post(COMP, json=body) for _ in range(4)))
    try:
        codes = [r.status_code for r in asyncio.run(fire())]
        assert 429 in codes and 200 in codes
        r429 = next(r for r in asyncio.run(fire()) if r.status_code == 429)
        assert r429.headers["retry-after"] and r429.json()["error"]["type"] == "rate_limit_error"
    finally:
        s.stop()


def test_health_is_503_while_loading_then_200(monkeypatch):
    from fastapi.testclient import TestClient
    from hyperdecode.serve import app as app_module
    tiny = hd.LLM("tiny-llama", device="cpu")

    def slow_llm(*args, **kwargs):
        time.sleep(0.5)
        return tiny
    monkeypatch.setattr(app_module, "LLM", slow_llm)
    with TestClient(app_module.create_app(app_module.ServerConfig(model="tiny-llama"))) as c:
        r = c.get("/health")
        assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
        deadline = time.monotonic() + 10
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        c.app.state.hd.engine.shutdown()


def test_failed_load_is_reported(tmp_path):
    from fastapi.testclient import TestClient
    from hyperdecode.serve.app import ServerConfig, create_app
    with TestClient(create_app(ServerConfig(model=str(tmp_path / "missing.gguf")))) as c:
        deadline = time.monotonic() + 5
        while "failed to load" not in c.get("/health").json()["error"]["message"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = c.post(CHAT, json=OK_CHAT)
        assert r.status_code == 503 and "missing.gguf" in r.json()["error"]["message"]


def test_bench_serve_reports_percentiles(server, tmp_path):
    from hyperdecode.serve.bench import bench, bench_args
    args = bench_args(server.url, concurrency=4, num_requests=8, input_len=12, output_len=10)
    s = asyncio.run(bench(args))
    assert s["completed"] == 8 and s["failed"] == 0
    assert 0 < s["ttft_ms"]["p50"] <= s["ttft_ms"]["p99"] <= s["e2e_ms"]["p99"]
    assert s["tpot_ms"]["p50"] > 0 and s["output_tok_s"] > 0
    args.request_rate, args.range_ratio = 20.0, 0.5  # an open loop of mixed lengths
    o = asyncio.run(bench(args))
    assert o["completed"] == 8 and o["failed"] == 0 and o["wall_s"] > 0
    low, high = o["output_tokens_range"]
    assert 5 <= low < high <= 15  # lengths drawn in [5, 15]
    args.request_rate, args.range_ratio = 0.0, 0.0
    args.multi_turn, args.concurrency, args.num_requests = 3, 2, 3  # 3 conversations of 3 calls, 2 at a time
    m = asyncio.run(bench(args))
    assert m["completed"] == 9 and [t["turn"] for t in m["per_turn"]] == [0, 1, 2]
    assert m["per_turn"][2]["prompt_tokens"] > m["per_turn"][0]["prompt_tokens"]  # the context grows
    args.system_len = 30  # an agent's system prompt: later turns find it, and the turns before, in the cache
    a = asyncio.run(bench(args))
    assert all(t["cached_tokens"] > 30 for t in a["per_turn"][1:])


def test_serve_and_bench_cli(tmp_path):
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hyperdecode.cli", "serve", "--model", "tiny-llama", "--port",
                             str(port), "--max-model-len", "1024", "--tool-call-parser", "glm45",
                             "--no-enable-prefix-caching"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        out = tmp_path / "bench.json"
        r = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "bench", "serve", "--url",
                            f"http://127.0.0.1:{port}", "--num-requests", "4", "--concurrency", "2",
                            "--output-len", "6", "--json", str(out)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "TTFT" in r.stdout and json.loads(out.read_text())["completed"] == 4
        # --tool-call-parser glm45: GLM's call text parses (tiny-llama's template alone would pick Hermes), and
        # --no-enable-prefix-caching: the same prompt twice finds nothing cached
        from tests.serve.test_tools import MESSAGES, TOOLS, forced
        call = "<tool_call>get_time\n<arg_key>zone</arg_key>\n<arg_value>CET</arg_value>\n</tool_call>"
        body = {"model": "tiny-llama", "messages": MESSAGES, "tools": TOOLS[1:], "max_tokens": 100, "temperature": 0,
                **forced(call)}
        for _ in range(2):
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120).json()
            assert "choices" in answer, answer
            calls = answer["choices"][0]["message"]["tool_calls"]
            assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
                [("get_time", {"zone": "CET"})], answer
            assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "serve", "--max-batch", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--max-batch" in bad.stderr and "Traceback" not in bad.stderr


def test_an_sse_event_is_one_line_for_every_client():
    """Text may hold characters that str.splitlines() breaks on (random weights emit any byte); JSON leaves U+0085,
    U+2028 and U+2029 raw, so the server escapes them: httpx's aiter_lines would otherwise split an event."""
    from hyperdecode.serve.generation import event
    text = "a\u2028b\x85c\u2029d\re\nf\x1cg"
    e = event({"choices": [{"text": text}]})
    assert e.endswith("\n\n") and len(e.strip().splitlines()) == 1
    assert json.loads(e[len("data: "):])["choices"][0]["text"] == text
