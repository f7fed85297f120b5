"""Operators' expectations: a non-streaming client that leaves stops its generation, /health answers under full
load without queueing, an oversized body is refused before it is read, the queue decides before any tokenizing,
and the OpenAI fields SDKs add are accepted."""
import asyncio
import logging
import socket
import threading
import time

import httpx
import pytest

import hyperdecode as hd
from hyperdecode.serve import protocol
from tests.serve.conftest import LiveServer

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
M = [{"role": "user", "content": "hi"}]
FOREVER = {"model": "tiny-llama", "prompt": "go", "max_tokens": 900, "ignore_eos": True}


@pytest.fixture(scope="module")
def busy():
    """A server with one slot and a queue of two: easy to fill."""
    s = LiveServer(hd.LLM("tiny-llama", device="cpu"), max_batch=1, max_queue=2, max_model_len=1024)
    yield s
    s.stop()


def wait_for(condition, within_s, what):
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def raw_post(port, path, body: bytes, extra_headers=b""):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 + extra_headers + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


def test_a_non_streaming_client_that_leaves_stops_its_generation(server):
    engine = server.engine
    before = engine.metrics.generation_tokens._value.get()
    sock = raw_post(server.port, COMP, httpx.Request("POST", "/", json=FOREVER).content)
    wait_for(lambda: engine.num_running == 1, 10, "the request never started")
    sock.close()
    gone = time.monotonic()
    wait_for(lambda: engine.num_running == 0, 1.0, "the abandoned request kept generating")
    assert time.monotonic() - gone < 1.0
    wait_for(lambda: engine.metrics.running._value.get() == 0, 1.0, "the running gauge stayed up")
    assert engine.metrics.generation_tokens._value.get() - before < 900


async def fill(c, engine):
    """One request running, two waiting (the queue is full); sent one after another, so none is refused."""
    tasks = []
    for running, waiting in ((1, 0), (1, 1), (1, 2)):
        tasks.append(asyncio.create_task(c.post(COMP, json=FOREVER)))
        deadline = time.monotonic() + 10
        while not (engine.num_running == running and len(engine.waiting) == waiting):
            assert time.monotonic() < deadline, "the server did not take the request"
            await asyncio.sleep(0.005)
    return tasks


def test_health_answers_within_a_second_while_the_queue_is_full(busy):
    async def fill_and_probe():
        async with httpx.AsyncClient(base_url=busy.url, timeout=60) as c:
            tasks = await fill(c, busy.engine)
            full = await c.post(COMP, json=FOREVER)
            t0 = time.monotonic()
            live = await c.get("/health")
            t_live = time.monotonic() - t0
            t0 = time.monotonic()
            ready = await c.get("/health", params={"ready": 1})
            t_ready = time.monotonic() - t0
            for req in list(busy.engine.waiting) + list(busy.engine.active.values()):
                busy.engine.cancel(req)
            await asyncio.gather(*tasks)
            return full, live, t_live, ready, t_ready
    full, live, t_live, ready, t_ready = asyncio.run(fill_and_probe())
    assert full.status_code == 429
    assert live.status_code == 200 and t_live < 1.0
    assert live.json()["engine_alive"] and live.json()["running"] == 1 and live.json()["waiting"] == 2
    assert ready.status_code == 200 and t_ready < 1.0  # the probes' own slot: not behind the queue
    assert httpx.get(busy.url + "/ready").json()["status"] == "ready"


def test_the_queue_decides_before_any_tokenizing(busy, monkeypatch):
    calls = []
    encode = busy.engine.inputs.chat_prompt
    monkeypatch.setattr(busy.engine.inputs, "chat_prompt", lambda *a, **k: calls.append(1) or encode(*a, **k))

    async def run():
        async with httpx.AsyncClient(base_url=busy.url, timeout=60) as c:
            tasks = await fill(c, busy.engine)
            refused = await asyncio.gather(*(c.post(CHAT, json={"model": "tiny-llama", "messages": M})
                                             for _ in range(5)))
            for req in list(busy.engine.waiting) + list(busy.engine.active.values()):
                busy.engine.cancel(req)
            await asyncio.gather(*tasks)
            return refused
    assert all(r.status_code == 429 for r in asyncio.run(run()))
    assert calls == []


def test_a_50_mb_body_gets_413_within_a_second_and_the_server_stays_responsive(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 52428800\r\n\r\n")
    sender = threading.Thread(target=lambda: _send_quietly(sock, b"x" * (1 << 20), 50), daemon=True)
    t0 = time.monotonic()
    sender.start()
    reply = b""
    while b"request_too_large" not in reply and time.monotonic() - t0 < 1.0:  # headers and body may be two reads
        reply += sock.recv(65536)
    took = time.monotonic() - t0
    assert b" 413 " in reply.split(b"\r\n")[0] and b"request_too_large" in reply and took < 1.0
    t0 = time.monotonic()
    assert httpx.get(server.url + "/version", timeout=5).status_code == 200 and time.monotonic() - t0 < 1.0
    sock.close()


def _send_quietly(sock, piece, times):
    try:
        for _ in range(times):
            sock.sendall(piece)
    except OSError:
        pass  # the server closed the connection after its 413


def test_a_chunked_body_over_the_limit_gets_413(server):
    def chunks():
        for _ in range(40):
            yield b" " * 65536
    r = httpx.post(server.url + COMP, content=chunks(), headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]["message"]


def test_a_large_prompt_is_tokenized_off_the_event_loop(server, monkeypatch):
    encode = server.engine.inputs.prompt_ids
    monkeypatch.setattr(server.engine.inputs, "prompt_ids", lambda p: time.sleep(1.0) or encode(p))

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            big = asyncio.create_task(c.post(COMP, json={"model": "tiny-llama", "prompt": "ab " * 8000,
                                                         "max_tokens": 1}))
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            v = await c.get("/version")
            return time.monotonic() - t0, v, await big
    took, v, big = asyncio.run(run())
    assert v.status_code == 200 and took < 0.5
    assert big.status_code == 400  # 24 000 characters do not fit 1024 tokens: checked in the worker thread


ACCEPTED = [  # fields that do not change the output: accepted (vLLM's policy)
    {"store": True}, {"metadata": {"k": "v"}}, {"service_tier": "auto"}, {"parallel_tool_calls": True},
    {"response_format": {"type": "text"}}, {"user": "u1"}, {"tools": []}, {"tool_choice": "none"},
    {"logit_bias": {}}, {"frequency_penalty": 0}, {"prompt_cache_key": "k"}, {"some_future_field": 1},
    {"logit_bias": {"5": 10}}, {"min_tokens": 1}, {"repetition_penalty": 1.3}, {"presence_penalty": 0.5},
    {"response_format": {"type": "json_object"}}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"logprobs": True, "top_logprobs": 2}, {"n": 2},
]
REFUSED = [  # fields that would change the output: a 400 naming them
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0]"),
    ({"response_format": {"type": "xml"}}, "response_format"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"logit_bias": {"5": 200}}, "logit_bias"), ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"min_tokens": -1}, "min_tokens"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"frequency_penalty": 3}, "frequency_penalty"), ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"), ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": [1]}, "chat_template_kwargs"),
]


@pytest.mark.parametrize("fields", ACCEPTED, ids=[next(iter(f)) for f in ACCEPTED])
def test_fields_that_do_not_change_the_output_are_accepted(http, fields, caplog, monkeypatch):
    monkeypatch.setattr(protocol, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="hyperdecode.serve"):
        r = http.post(CHAT, json={"model": "tiny-llama", "messages": M, "max_tokens": 2, **fields})
    assert r.status_code == 200, r.text
    warned = [rec.getMessage() for rec in caplog.records if "unknown request field" in rec.getMessage()]
    assert warned == (["ignoring the unknown request field 'some_future_field'"] if "some_future_field" in fields
                      else [])


@pytest.mark.parametrize("fields, param", REFUSED, ids=[p + str(i) for i, (_, p) in enumerate(REFUSED)])
def test_fields_that_would_change_the_output_are_a_400_naming_them(http, fields, param):
    r = http.post(CHAT, json={"model": "tiny-llama", "messages": M, "max_tokens": 2, **fields})
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert f"'{param}'" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, param", [
    (b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
    (b'{"model": "tiny-llama", "prompt": "a\\udfffb"}', "prompt"),
    (b'{"model": "\\ud800", "prompt": "a"}', "model"),
    (b'{"model": "tiny-llama", "prompt": "a", "\\ud800x": 1}', "\\ud800x"),  # a key: named escaped
])
def test_a_lone_surrogate_is_a_400_naming_the_field(server, body, param):
    path = CHAT if b"messages" in body else COMP
    r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_chat_template_kwargs_reach_the_template(http):
    default = http.post("/tokenize", json={"messages": M}).json()["count"]
    bare = http.post("/tokenize", json={"messages": M, "chat_template_kwargs": {"add_generation_prompt": False}})
    assert bare.json()["count"] < default


@pytest.mark.parametrize("args, names", [
    (["--model", "/nope/model"], "/nope/model"),
    (["--model", "tiny-llama", "--backend", "graph", "--device", "cpu"], "CUDA"),
])
def test_serve_exits_non_zero_with_a_logged_error_when_the_model_fails_to_load(args, names):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "serve", "--port", "0", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "ERROR" in r.stderr and "failed to load" in r.stderr and names in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("body, param, text", [
    (b'{"model": "tiny-llama", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, "nested too deeply"),
    (b'{"model": "tiny-llama", "prompt": ' + b"[" * 900 + b"]" * 900 + b"}", "prompt", "token ids"),
    (b'{"model": "tiny-llama", "prompt": "a", "request_timeout": NaN}', "request_timeout", "positive number"),
    (b'{"model": "tiny-llama", "prompt": "a", "request_timeout": Infinity}', "request_timeout", "positive number"),
    (b'{"model": "tiny-llama", "prompt": "a", "temperature": NaN}', "temperature", "[0, 2]"),
])
def test_odd_json_is_a_400(server, body, param, text):
    r = httpx.post(server.url + COMP, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param and text in r.json()["error"]["message"]


def test_a_request_may_shorten_the_servers_deadline_but_not_lengthen_it():
    from hyperdecode.serve.generation import request_deadline
    assert request_deadline(0.5, 600.0) == 0.5 and request_deadline(10 ** 9, 600.0) == 600.0


def test_the_token_budget_leaves_room_for_the_probes_row():
    from hyperdecode.errors import ConfigError
    from hyperdecode.serve.engine_thread import EngineThread
    llm = hd.LLM("tiny-llama", device="cpu", max_num_batched_tokens=4)
    with pytest.raises(ConfigError, match="at least max_batch \\+ 1"):
        EngineThread(llm, max_batch=4)
    assert llm.core.owner is None  # refused before it took the core
    EngineThread(llm, max_batch=3).shutdown()


def test_a_model_without_a_chat_template_is_a_400_for_chat(tmp_path):
    from hyperdecode.engine.inputs import InputProcessor
    from hyperdecode.model.tokenizer import Tokenizer
    tok = Tokenizer.byte_level(chat_template=None)
    inputs = InputProcessor(tok, vocab_size=400, eos_ids=[], max_model_len=64)
    with pytest.raises(hd.RequestError, match="no chat template") as e:
        inputs.process(messages=M)
    assert e.value.param == "messages"
