"""One request cannot hurt another: a bad field is a 400 before admission, and a fault inside the engine (its
forward row, its admission, its sampler, its detokenizer) fails that request alone, with a logged request id,
while a request streaming next to it finishes with exactly the text it has alone; the slots come back."""
import asyncio
import json
import logging
import time

import httpx
import pytest

import hyperdecode as hd
from hyperdecode.engine import core as core_module
from hyperdecode.engine.core import EngineCore
from hyperdecode.engine.output import OutputStream
from tests.serve.conftest import LiveServer

COMP = "/v1/completions"
LONG = {"model": "tiny-llama", "prompt": "The quick brown fox", "max_tokens": 48, "ignore_eos": True,
        "temperature": 0}
MARK = 200  # a prompt token id that makes the faulty forward raise


@pytest.fixture(scope="module")
def srv():
    # no prefix cache: a faulty prompt sent again must be fed again for the injected forward fault to fire
    s = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0, enable_prefix_caching=False), max_batch=3, max_queue=8,
                   max_model_len=256)
    yield s
    s.stop()


async def stream_text(c, body):
    """(text, finish_reason, error envelope or None) of a streamed completion."""
    text, finish, error = "", None, None
    async with c.stream("POST", COMP, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if "error" in obj:
                error = obj["error"]
            elif obj["choices"]:
                text += obj["choices"][0]["text"]
                finish = obj["choices"][0]["finish_reason"] or finish
    return text, finish, error


async def beside_a_stream(url, other):
    """Streams LONG and, once it has started, runs `other(client)`; returns (LONG's text, other's result)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        task = asyncio.create_task(stream_text(c, LONG))
        await asyncio.sleep(0.05)
        result = await other(c)
        return await task, result


def settle(engine):
    """Every request ended, and the gauges say so (the engine thread sets them after the step that ended them)."""
    deadline = time.monotonic() + 5
    gauges = (engine.metrics.running._value, engine.metrics.waiting._value)
    while engine.num_running or engine.waiting or any(g.get() for g in gauges):
        assert time.monotonic() < deadline, "requests were left running"
        time.sleep(0.01)
    assert engine.free_slots == engine.max_batch


def test_bad_seed_and_tiny_temperature_while_another_streams(srv, offline):
    expected = offline.generate(LONG["prompt"], max_tokens=48, ignore_eos=True).text
    greedy = offline.generate("hello", max_tokens=5, ignore_eos=True).text

    async def others(c):
        seed = await c.post(COMP, json={"model": "tiny-llama", "prompt": "hi", "seed": 2 ** 64, "temperature": 1})
        tiny = await c.post(COMP, json={"model": "tiny-llama", "prompt": "hello", "temperature": 1e-300,
                                        "max_tokens": 5, "ignore_eos": True})
        return seed, tiny
    (text, finish, error), (seed, tiny) = asyncio.run(beside_a_stream(srv.url, others))
    assert seed.status_code == 400 and seed.json()["error"]["param"] == "seed"
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["text"] == greedy  # greedy, not NaN
    assert (text, finish, error) == (expected, "length", None)
    settle(srv.engine)


def inject(kind, monkeypatch, engine):
    """Patches the engine to fail requests whose seed is 13 (or whose prompt holds MARK) at one stage."""
    if kind == "sampler":
        sample = core_module.sample
        monkeypatch.setattr(core_module, "sample", lambda logits, p, g: (
            (_ for _ in ()).throw(FloatingPointError("injected")) if p.seed == 13 else sample(logits, p, g)))
    elif kind == "detokenizer":
        update = OutputStream.update
        monkeypatch.setattr(OutputStream, "update", lambda self: (
            (_ for _ in ()).throw(TypeError("injected")) if self.seq.params.seed == 13 else update(self)))
    elif kind == "admission":
        add = EngineCore.add
        monkeypatch.setattr(EngineCore, "add", lambda self, seq, stream=None: (
            (_ for _ in ()).throw(OverflowError("injected")) if seq.params.seed == 13 else add(self, seq, stream)))
    else:
        forward = engine.core.runner.forward
        monkeypatch.setattr(engine.core.runner, "forward", lambda tokens, pos, slots, want: (
            (_ for _ in ()).throw(RuntimeError("injected")) if (tokens == MARK).any()
            else forward(tokens, pos, slots, want)))


@pytest.mark.parametrize("kind", ["sampler", "detokenizer", "admission", "forward"])
@pytest.mark.parametrize("streaming", [False, True])
def test_an_engine_fault_fails_one_request_alone(srv, offline, monkeypatch, caplog, kind, streaming):
    expected = offline.generate(LONG["prompt"], max_tokens=48, ignore_eos=True).text
    inject(kind, monkeypatch, srv.engine)
    bad = {"model": "tiny-llama", "prompt": [MARK, 5, 6, 7], "max_tokens": 8, "temperature": 1.0, "seed": 13}

    async def other(c):
        if streaming:
            return await stream_text(c, bad)
        r = await c.post(COMP, json=bad, headers={"x-request-id": f"faulty-{kind}"})
        return r.status_code, r.json()
    with caplog.at_level(logging.ERROR, logger="hyperdecode.serve"):
        (text, finish, error), result = asyncio.run(beside_a_stream(srv.url, other))
    if streaming:
        assert result[2]["type"] == "server_error" and "injected" in result[2]["message"]
    else:
        assert result[0] == 500 and "injected" in result[1]["error"]["message"]
        assert any("faulty-" + kind in r.getMessage() for r in caplog.records)  # logged with its request id
    assert (text, finish, error) == (expected, "length", None)
    settle(srv.engine)
    monkeypatch.undo()
    assert httpx.post(srv.url + COMP, json=bad, timeout=30).status_code == 200  # the engine serves on
