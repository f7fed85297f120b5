"""Soak test of the HTTP server on loopback: N concurrent clients send a mix of streaming and non-streaming chat and
completion requests, a fraction of them walk away mid-request, and a stream of malformed requests is drawn from a
table of kinds, each with the status it must get. Bounded in time and in attempts.

It prints completed / 429 / disconnected / 4xx by kind / 5xx / hung, the gauges and free slots after the load has
drained, the server's RSS before and after, and whether the server's counters agree with what the clients saw;
it exits non-zero on any 5xx, hang, unexpected status, leaked slot or gauge left above 0.

    python bench/soak.py [--clients 200] [--duration 60] [--model tiny-llama] [--url http://127.0.0.1:PORT]

Without --url it starts `hyperdecode serve` in its own process (so RSS is the server's alone).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

from serve_overhead import start_server

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
RESP = "/v1/responses"
MAX_REQUEST_BYTES = 65536
M = [{"role": "user", "content": "hi"}]
TOKENIZED = (400, 429)  # a check that needs the tokenizer runs after admission: a 429 first when the queue is full


def malformed_kinds(model: str) -> list[tuple[str, str, str, object, int]]:
    """(kind, method, path, body: a dict, raw bytes or None, the status it must get, or a tuple of them)."""
    c = {"model": model, "messages": M, "max_tokens": 4}
    p = {"model": model, "prompt": "hi", "max_tokens": 4}
    return [
        ("bad_json", "POST", CHAT, b"{not json", 400),
        ("array_body", "POST", CHAT, b"[1, 2]", 400),
        ("missing_model", "POST", CHAT, {"messages": M}, 400),
        ("unknown_model", "POST", CHAT, {**c, "model": "gpt-9"}, 404),
        ("empty_messages", "POST", CHAT, {**c, "messages": []}, 400),
        ("missing_messages", "POST", CHAT, {"model": model}, 400),
        ("bad_role", "POST", CHAT, {**c, "messages": [{"role": "wizard", "content": "x"}]}, 400),
        ("content_number", "POST", CHAT, {**c, "messages": [{"role": "user", "content": 5}]}, 400),
        ("content_image", "POST", CHAT, {**c, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         400),
        ("lone_surrogate", "POST", CHAT, json.dumps({**c, "messages": [{"role": "user", "content": "\ud800"}]})
         .encode(), 400),
        ("max_tokens_negative", "POST", CHAT, {**c, "max_tokens": -1}, 400),
        ("max_tokens_string", "POST", CHAT, {**c, "max_tokens": "ten"}, 400),
        ("max_tokens_huge", "POST", CHAT, {**c, "max_tokens": 10 ** 9}, TOKENIZED),
        ("max_completion_tokens_zero", "POST", CHAT, {**c, "max_completion_tokens": 0}, 400),
        ("temperature_high", "POST", CHAT, {**c, "temperature": 5}, 400),
        ("temperature_string", "POST", CHAT, {**c, "temperature": "hot"}, 400),
        ("top_p_zero", "POST", CHAT, {**c, "top_p": 0}, 400),
        ("top_k_negative", "POST", CHAT, {**c, "top_k": -5}, 400),
        ("n_too_many", "POST", CHAT, {**c, "n": 17}, 400),
        ("seed_float", "POST", CHAT, {**c, "seed": 1.5}, 400),
        ("seed_2_64", "POST", CHAT, {**c, "seed": 2 ** 64}, 400),
        ("stop_empty", "POST", CHAT, {**c, "stop": [""]}, 400),
        ("stop_five", "POST", CHAT, {**c, "stop": ["a", "b", "c", "d", "e"]}, 400),
        ("stream_string", "POST", CHAT, {**c, "stream": "yes"}, 400),
        ("stream_options_alone", "POST", CHAT, {**c, "stream_options": {"include_usage": True}}, 400),
        ("tools_nameless", "POST", CHAT, {**c, "tools": [{"type": "function", "function": {}}]}, 400),
        ("format_unknown", "POST", CHAT, {**c, "response_format": {"type": "xml"}}, 400),
        ("top_logprobs_alone", "POST", CHAT, {**c, "top_logprobs": 2}, 400),
        ("penalty_out_of_range", "POST", CHAT, {**c, "presence_penalty": 9}, 400),
        ("template_kwargs_bad", "POST", CHAT, {**c, "chat_template_kwargs": {"messages": 1}}, 400),
        ("timeout_negative", "POST", CHAT, {**c, "request_timeout": -1}, 400),
        ("prompt_empty", "POST", COMP, {**p, "prompt": ""}, 400),
        ("prompt_bad_ids", "POST", COMP, {**p, "prompt": [1, "a"]}, 400),
        ("prompt_out_of_vocab", "POST", COMP, {**p, "prompt": [10 ** 7]}, 400),
        ("prompt_too_long", "POST", COMP, {**p, "prompt": "x" * 3000, "max_tokens": 5}, TOKENIZED),
        ("echo_not_bool", "POST", COMP, {**p, "echo": "yes"}, 400),
        ("body_too_large", "POST", COMP, b" " * (MAX_REQUEST_BYTES + 1), 413),
        ("wrong_method", "GET", COMP, None, 405),
        ("unknown_route", "POST", "/v1/nothing", {}, 404),
        ("detokenize_bad", "POST", "/detokenize", {"tokens": [-1]}, 400),
        ("detokenize_boolean", "POST", "/detokenize", {"tokens": [True]}, 400),
        ("max_tokens_fraction", "POST", CHAT, {**c, "max_tokens": 4.5}, 400),
        ("logit_bias_out_of_vocab", "POST", CHAT, {**c, "logit_bias": {"99999999": 1}}, TOKENIZED),  # the vocabulary: after admission
        ("message_name_not_string", "POST", CHAT, {**c, "messages": [{"role": "user", "content": "x", "name": [1]}]},
         400),
        ("tool_choice_without_tools", "POST", CHAT, {**c, "tool_choice": "required"}, 400),
        ("responses_format_string", "POST", RESP, {"model": model, "input": "hi", "text": {"format": "json"}}, 400),
        ("responses_text_string", "POST", RESP, {"model": model, "input": "hi", "text": "x"}, 400),
        ("responses_item_incomplete", "POST", RESP, {"model": model, "input": [{"type": "function_call_output"}]},
         400),
        ("responses_max_output_zero", "POST", RESP, {"model": model, "input": "hi", "max_output_tokens": 0}, 400),
    ]


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)  # completed, rate_limited, disconnected, 5xx, hung
    malformed: Counter = field(default_factory=Counter)  # kind -> times it got its status
    unexpected: list = field(default_factory=list)  # (what, status, body head)
    completion_tokens: int = 0
    attempts: int = 0
    missing_retry_after: int = 0


async def well_formed(c: httpx.AsyncClient, model: str, rng: random.Random, t: Tally, disconnect: bool,
                      hang_s: float) -> None:
    chat = rng.random() < 0.5
    stream = rng.random() < 0.5
    body = {"model": model, "max_tokens": rng.randint(1, 24), "temperature": rng.choice([0, 0.7, 1.0]),
            "seed": rng.randint(0, 2 ** 31), "ignore_eos": rng.random() < 0.5}
    body.update({"messages": [{"role": "user", "content": f"tell me about {rng.randint(0, 999)}"}]} if chat
                else {"prompt": f"count {rng.randint(0, 999)}:"})
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    path = CHAT if chat else COMP
    leave_after = rng.uniform(0.0, 0.3) if disconnect else None
    try:
        await asyncio.wait_for(one_request(c, path, body, stream, t, leave_after, rng), hang_s)
    except asyncio.TimeoutError:
        t.outcomes["hung"] += 1
        t.unexpected.append((f"hung {path}", None, json.dumps(body)[:120]))


async def one_request(c: httpx.AsyncClient, path: str, body: dict, stream: bool, t: Tally,
                      leave_after: float | None, rng: random.Random) -> None:
    if leave_after is not None and not stream:
        try:  # the client gives up: httpx closes the connection
            r = await asyncio.wait_for(c.post(path, json=body), leave_after)
        except asyncio.TimeoutError:
            t.outcomes["disconnected"] += 1
            return
        t.outcomes["answered_before_leaving"] += 1
        record(t, r, path)
        return
    if not stream:
        record(t, await c.post(path, json=body), path)
        return
    chunks_before_leaving = rng.randint(1, 6) if leave_after is not None else None
    async with c.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            record(t, r, path)
            return
        seen, usage_tokens, errored = 0, None, False
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            try:
                obj = json.loads(line[6:])
            except ValueError:
                t.outcomes["bad_event"] += 1
                t.unexpected.append((f"unparseable event {path}", 200, line[:120]))
                return
            seen += 1
            if "error" in obj:
                errored = True
                t.unexpected.append((f"stream error {path}", obj["error"].get("code"), obj["error"]["message"][:120]))
            elif obj.get("usage"):
                usage_tokens = obj["usage"]["completion_tokens"]
            if chunks_before_leaving is not None and seen >= chunks_before_leaving:
                t.outcomes["disconnected"] += 1
                return
        if errored:
            t.outcomes["5xx"] += 1
        elif usage_tokens is None:
            t.unexpected.append((f"stream without usage {path}", 200, ""))
        else:
            t.outcomes["completed"] += 1
            t.completion_tokens += usage_tokens


def record(t: Tally, r: httpx.Response, path: str) -> None:
    if r.status_code == 200:
        t.outcomes["completed"] += 1
        t.completion_tokens += r.json()["usage"]["completion_tokens"]
    elif r.status_code == 429:
        t.outcomes["rate_limited"] += 1
        t.missing_retry_after += "retry-after" not in r.headers
    elif r.status_code >= 500:
        t.outcomes["5xx"] += 1
        t.unexpected.append((path, r.status_code, r.text[:120]))
    else:
        t.unexpected.append((path, r.status_code, r.text[:120]))


async def malformed(c: httpx.AsyncClient, kind: tuple, t: Tally) -> None:
    name, method, path, body, want = kind
    content = body if isinstance(body, bytes) else (None if body is None else json.dumps(body).encode())
    r = await c.request(method, path, content=content, headers={"content-type": "application/json"})
    envelope_ok = set(r.json().get("error", {})) >= {"message", "type", "param", "code"}
    if r.status_code in (want if isinstance(want, tuple) else (want,)) and envelope_ok:
        t.malformed[name] += 1
    else:
        t.outcomes["5xx" if r.status_code >= 500 else "wrong_status"] += 1
        t.unexpected.append((name, r.status_code, r.text[:120]))


async def client(url: str, model: str, seed: int, args: argparse.Namespace, end: float, t: Tally,
                 kinds: list) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=args.hang_s) as c:
        while time.monotonic() < end and t.attempts < args.max_attempts:
            t.attempts += 1
            limited = t.outcomes["rate_limited"]
            try:
                if rng.random() < args.malformed:
                    await malformed(c, rng.choice(kinds), t)
                else:
                    await well_formed(c, model, rng, t, rng.random() < args.disconnect, args.hang_s)
            except httpx.HTTPError as e:
                t.outcomes["transport_error"] += 1
                t.unexpected.append(("transport", None, f"{type(e).__name__}: {e}"[:120]))
            if t.outcomes["rate_limited"] > limited:  # back off a little (less than Retry-After: keep the pressure)
                await asyncio.sleep(rng.uniform(0.05, 0.25))


def server_state(url: str) -> tuple[dict, dict]:
    """(/health JSON, /metrics samples without the model label)."""
    from prometheus_client.parser import text_string_to_metric_families
    health = httpx.get(url + "/health", timeout=10).json()
    samples = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            samples[key] = s.value
    return health, samples


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def drained(url: str, within_s: float) -> dict:
    deadline = time.monotonic() + within_s
    while True:
        health, _ = server_state(url)
        if (health["running"] == 0 and health["waiting"] == 0) or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running server on loopback (default: start one)")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--max-attempts", type=int, default=100000)
    ap.add_argument("--disconnect", type=float, default=0.1, help="fraction of requests abandoned mid-way")
    ap.add_argument("--malformed", type=float, default=0.2, help="fraction of requests drawn from the bad table")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--hang-s", type=float, default=60.0, help="a request taking longer than this hung")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the summary here")
    args = ap.parse_args()
    proc = None
    if args.url:
        if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            ap.error("--url must be a loopback address")
        url = args.url
    else:
        proc, url = start_server(args.model, args.max_batch, "--max-queue", str(args.max_queue),
                                 "--max-request-bytes", str(MAX_REQUEST_BYTES))
    try:
        return run(url, proc.pid if proc else None, args)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


def run(url: str, pid: int | None, args: argparse.Namespace) -> int:
    model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
    health_before, before = server_state(url)
    rss_before = rss_mib(pid)
    kinds = malformed_kinds(model)
    t = Tally()
    start = time.monotonic()

    async def load() -> None:
        end = time.monotonic() + args.duration
        await asyncio.gather(*(client(url, model, args.seed * 100003 + i, args, end, t, kinds)
                               for i in range(args.clients)))
    asyncio.run(load())
    elapsed = time.monotonic() - start
    health = drained(url, 30.0)
    _, after = server_state(url)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    served = {r: delta.get(f"vllm:request_success_total|finished_reason={r}", 0)
              for r in ("stop", "length", "abort", "error")}
    left = t.outcomes["disconnected"]
    generated = delta.get("vllm:generation_tokens_total", 0)
    done = t.outcomes["completed"]
    agree = {  # what the server counted against what the clients saw
        "finished = completed (+ some that finished as their client left)": done <= served["stop"] + served["length"]
        <= done + left,
        "aborts <= disconnects": served["abort"] <= left,
        "no engine errors": served["error"] == 0,
        "generated tokens >= tokens the clients were sent": generated >= t.completion_tokens,
    }
    leaks = {"running": health["running"], "waiting": health["waiting"],
             "running_gauge": after.get("vllm:num_requests_running", 0),
             "waiting_gauge": after.get("vllm:num_requests_waiting", 0),
             "free_slots": health["free_slots"], "max_batch": health["max_batch"]}
    summary = {"clients": args.clients, "seconds": round(elapsed, 1), "attempts": t.attempts,
               "engine_steps_per_s": round((health["steps"] - health_before["steps"]) / elapsed, 1),
               "generated_tok_per_s": round(generated / elapsed, 1),
               **{k: t.outcomes[k] for k in ("completed", "rate_limited", "disconnected", "answered_before_leaving",
                                            "5xx", "hung", "wrong_status", "transport_error", "bad_event")},
               "malformed_kinds_seen": len(t.malformed), "malformed_kinds": len(kinds),
               "malformed_by_kind": dict(sorted(t.malformed.items())), "missing_retry_after": t.missing_retry_after,
               "server_counted": served, "after": leaks, "agree": agree,
               "rss_mib_before": rss_before, "rss_mib_after": rss_mib(pid), "unexpected": t.unexpected[:20]}
    failures = [name for name, bad in (("5xx", t.outcomes["5xx"]), ("hung", t.outcomes["hung"]),
                                       ("wrong_status", t.outcomes["wrong_status"] + len(t.unexpected)),
                                       ("transport_error", t.outcomes["transport_error"]),
                                       ("bad_event", t.outcomes["bad_event"]),
                                       ("missing Retry-After", t.missing_retry_after),
                                       ("gauge above 0", leaks["running_gauge"] + leaks["waiting_gauge"]),
                                       ("leaked slot", leaks["max_batch"] - leaks["free_slots"]),
                                       ("counters disagree", not all(agree.values()))) if bad]
    summary["failures"] = failures
    print_summary(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if failures else 0


def print_summary(s: dict) -> None:
    print(f"soak: {s['clients']} clients, {s['seconds']} s, {s['attempts']} attempts; the engine ran "
          f"{s['engine_steps_per_s']} steps/s, generated {s['generated_tok_per_s']} tok/s")
    print(f"  completed {s['completed']}  429 {s['rate_limited']}  disconnected {s['disconnected']} "
          f"(+{s['answered_before_leaving']} answered first)  5xx {s['5xx']}  hung {s['hung']}  "
          f"wrong status {s['wrong_status']}  transport errors {s['transport_error']}  bad events {s['bad_event']}")
    print(f"  malformed: {sum(s['malformed_by_kind'].values())} requests, {s['malformed_kinds_seen']} of "
          f"{s['malformed_kinds']} kinds, each with its expected 4xx")
    print(f"  server counted {s['server_counted']}; after drain {s['after']}")
    print(f"  RSS {s['rss_mib_before']} -> {s['rss_mib_after']} MiB")
    for name, ok in s["agree"].items():
        print(f"  {'ok ' if ok else 'BAD'} {name}")
    for u in s["unexpected"]:
        print(f"  unexpected: {u}")
    print("PASS" if not s["failures"] else f"FAIL: {', '.join(s['failures'])}")


if __name__ == "__main__":
    sys.exit(main())
