"""Failures in disaggregated serving, as processes on loopback: a decode instance killed mid-stream (its request ends
with an error within a bound, the prefill instance's rows come back, a second decode instance keeps serving) and a
prefill whose parameters are never used (freed after the abort timeout)."""
import json
import time

import httpx
import pytest


from tests.serve.conftest import metric_values  # noqa: E402

from .conftest import need_pd, router, serve  # noqa: E402

need_pd()

MODEL = "tiny-llama"
ABORT_S = 3.0


def wait_for(check, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {within_s} s"
        time.sleep(0.1)


def body(content: str, max_tokens: int, stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": stream}


def test_a_decode_instance_killed_mid_stream(logs):
    prefill = serve(logs, MODEL, "kv_producer", abort_timeout_s=ABORT_S)
    decodes = [serve(logs, MODEL, "kv_consumer", name=f"decode-{i}") for i in range(2)]
    front = router(logs, [prefill], decodes)
    try:
        started = time.monotonic()
        ended_by, seen = None, 0
        try:
            with httpx.stream("POST", front.url + "/v1/chat/completions", json=body("Count on.", 900, True),
                              timeout=httpx.Timeout(30, read=20)) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        ended_by = "done"
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            ended_by = "error event"
                        seen += 1
                    if seen == 5:  # the decode instance is streaming: kill it
                        victim = next(d for d in decodes if d.health()["running"] > 0)
                        victim.kill()
                        killed_at = time.monotonic()
        except httpx.HTTPError as e:
            ended_by = type(e).__name__
        assert ended_by != "done", "the stream finished normally although its decode instance was killed"
        assert time.monotonic() - killed_at < 25, "the stream did not end within its bound"
        assert seen < 900 and time.monotonic() - started < 60
        # the prefill instance's rows are all free again, within its abort timeout
        wait_for(lambda: prefill.health()["held_rows"] == 0, ABORT_S + 5, "the prefill's rows freed")
        wait_for(lambda: prefill.health()["free_slots"] == prefill.health()["max_batch"], 10, "prefill idle")
        # the other decode instance keeps serving through the router (once its health check drops the dead one)
        survivor = next(d for d in decodes if d is not victim)
        served = 0
        deadline = time.monotonic() + 30
        while served < 3:
            assert time.monotonic() < deadline, "the surviving decode instance did not serve through the router"
            r = httpx.post(front.url + "/v1/chat/completions", json=body("Hello there.", 8, False), timeout=30)
            served += r.status_code == 200
        assert survivor.health()["engine_alive"]
        # a prefill the router sent on to the dead instance is held until the abort timeout, then freed
        wait_for(lambda: prefill.health()["held_rows"] == 0, ABORT_S + 5, "every prefill row freed")
    finally:
        for p in (front, *decodes, prefill):
            p.stop()


def test_an_unused_prefill_is_freed_after_the_abort_timeout(logs):
    prefill = serve(logs, MODEL, "kv_producer", abort_timeout_s=ABORT_S)
    try:
        ask = body("Prefill only, then nobody pulls it.", 1, False)
        ask["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False}
        r = httpx.post(prefill.url + "/v1/chat/completions", json=ask, timeout=60)
        assert r.status_code == 200, r.text
        params = r.json()["kv_transfer_params"]
        assert params["remote_block_ids"] and params["remote_engine_id"]
        health = prefill.health()
        assert health["held_rows"] == 1 and health["free_slots"] == health["max_batch"] - 1
        held_at = time.monotonic()
        wait_for(lambda: prefill.health()["held_rows"] == 0, ABORT_S + 5, "the unused row freed")
        assert time.monotonic() - held_at > ABORT_S - 1  # held for the timeout, not dropped at once
        health = prefill.health()
        assert health["free_slots"] == health["max_batch"]
        metrics = metric_values(httpx.get(prefill.url + "/metrics", timeout=10).text)
        assert metrics["hyperdecode:kv_held_rows_expired_total"] == 1
        assert metrics["hyperdecode:kv_held_rows"] == 0
    finally:
        prefill.stop()
