"""`hyperdecode bench serve`: load a running server the way `vllm bench serve` does and report latency percentiles.

Definitions (as vLLM, SGLang and genai-perf): TTFT = time to the first chunk with a choice; ITL = gaps between
chunks; TPOT = (E2E − TTFT) / (output tokens − 1) per request; output tok/s = all output tokens / wall time.
`--multi-turn N` runs agent loops: `--num-requests` conversations (`--concurrency` at a time) of N sequential chat
calls each, every call resending the growing history. `--request-rate R` starts requests at Poisson arrivals of R
per second (an open loop) instead of `--concurrency` clients back to back; `--range-ratio` mixes lengths.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import HyperdecodeError
from ..flags import check_at_least, check_output_file

__all__ = ["RequestResult", "percentiles", "run_bench", "bench", "bench_args"]

WORDS = ("the model of a city runs fast and every agent calls it again with more context to read while tokens "
         "stream back in order so latency adds up over many turns").split()


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, found in the server's prefix cache
    output_tokens: int = 0
    text: str = ""
    error: str = ""
    turn: int = 0

    @property
    def tpot(self) -> float | None:
        return (self.e2e - self.ttft) / (self.output_tokens - 1) if self.output_tokens > 1 else None


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Linear-interpolated percentiles (numpy's default method).

    >>> percentiles([1.0, 2.0, 3.0, 4.0], (50, 100))
    {'p50': 2.5, 'p100': 4.0}
    """
    if not values:
        return {f"p{q}": float("nan") for q in qs}
    s = sorted(values)
    out = {}
    for q in qs:
        k = (len(s) - 1) * q / 100
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        out[f"p{q}"] = s[lo] + (s[hi] - s[lo]) * (k - lo)
    return out


async def stream_request(client: httpx.AsyncClient, url: str, body: dict, headers: dict) -> RequestResult:
    start = time.perf_counter()
    res, last = RequestResult(ok=False), None
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    res.error = obj["error"].get("message", "error")
                    return res
                now = time.perf_counter()
                if obj.get("choices"):
                    if last is None:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
                    c = obj["choices"][0]
                    res.text += c.get("text") or c.get("delta", {}).get("content") or ""
                if obj.get("usage"):
                    res.prompt_tokens = obj["usage"]["prompt_tokens"]
                    res.output_tokens = obj["usage"]["completion_tokens"]
                    details = obj["usage"].get("prompt_tokens_details") or {}
                    res.cached_tokens = details.get("cached_tokens") or 0
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    res.e2e, res.ok = time.perf_counter() - start, last is not None
    return res


def random_prompt(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


async def server_model(client: httpx.AsyncClient, headers: dict, model: str | None) -> str:
    """`model`, or the first model the server lists; either way the server must answer before the run starts."""
    r = await client.get("/v1/models", headers=headers)
    if r.status_code != 200:
        raise HyperdecodeError(f"{r.request.url} answered HTTP {r.status_code}: {r.text[:200]}")
    if model is not None:
        return model
    try:
        return r.json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise HyperdecodeError(f"{r.request.url} does not list a model (pass --model)") from None


DEFAULTS = {"model": None, "concurrency": 1, "num_requests": 8, "input_len": 32, "output_len": 32, "multi_turn": 0,
            "system_len": 0, "request_rate": 0.0, "range_ratio": 0.0, "api_key": None, "seed": 0, "json": None}


def bench_args(url: str, **given: Any) -> argparse.Namespace:
    """The flags of `bench serve` for a run from Python (benchmarks, tests): `bench(bench_args(url, concurrency=4))`."""
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"bench serve has no flag {', '.join(sorted(unknown))}")
    return argparse.Namespace(url=url, **{**DEFAULTS, **given})


def lengths(rng: random.Random, args: Any) -> tuple[int, int]:
    """(prompt words, output tokens) of one request: `--input-len` / `--output-len`, or with `--range-ratio` r drawn
    uniformly from [len·(1 − r), len·(1 + r)] (vLLM's --random-range-ratio), so a run mixes long and short."""
    r = args.range_ratio
    draw = lambda n: max(1, round(n * rng.uniform(1 - r, 1 + r))) if r else n  # noqa: E731
    return draw(args.input_len), draw(args.output_len)


async def bench(args: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    async with httpx.AsyncClient(base_url=args.url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        model = await server_model(client, headers, args.model)
        common = {"model": model, "ignore_eos": True, "temperature": 0.0, "stream": True,
                  "stream_options": {"include_usage": True}}
        results: list[RequestResult] = []

        async def completion() -> None:
            words, out = lengths(rng, args)
            body = {**common, "prompt": random_prompt(rng, words), "max_tokens": out}
            results.append(await stream_request(client, "/v1/completions", body, headers))

        async def conversation() -> None:
            messages = [{"role": "system", "content": random_prompt(rng, args.system_len)}] if args.system_len else []
            for turn in range(args.multi_turn):
                words, out = lengths(rng, args)
                messages.append({"role": "user", "content": random_prompt(rng, words)})
                body = {**common, "messages": messages, "max_tokens": out}
                r = await stream_request(client, "/v1/chat/completions", body, headers)
                r.turn = turn
                results.append(r)
                messages.append({"role": "assistant", "content": r.text})

        start = time.perf_counter()
        one = conversation if args.multi_turn else completion
        if args.request_rate:
            await arrivals(one, rng, args)
        else:
            await closed_loop(one, args)
        wall = time.perf_counter() - start
    return summarize(results, wall, args)


async def closed_loop(one: Any, args: Any) -> None:
    """`--concurrency` clients, each starting its next request (or conversation) when the last one ended."""
    queue = list(range(args.num_requests))

    async def client() -> None:
        while queue:
            queue.pop()
            await one()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))


async def arrivals(one: Any, rng: random.Random, args: Any) -> None:
    """An open loop: requests (or conversations) start at Poisson arrivals of `--request-rate` per second, whatever
    the server's pace, at most `--concurrency` in flight (vllm bench serve's --request-rate and
    --max-concurrency)."""
    slots = asyncio.Semaphore(args.concurrency)

    async def guarded() -> None:
        async with slots:
            await one()
    started = []
    for i in range(args.num_requests):
        if i:
            await asyncio.sleep(rng.expovariate(args.request_rate))
        started.append(asyncio.ensure_future(guarded()))
    await asyncio.gather(*started)


def summarize(results: list[RequestResult], wall: float, args: Any) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    ms = lambda xs: {k: v * 1e3 for k, v in percentiles(xs).items()}  # noqa: E731
    summary = {"completed": len(ok), "failed": len(results) - len(ok), "wall_s": wall,
               "output_tok_s": out_tokens / wall, "request_s": len(ok) / wall,
               "ttft_ms": ms([r.ttft for r in ok]), "tpot_ms": ms([r.tpot for r in ok if r.tpot is not None]),
               "itl_ms": ms([x for r in ok for x in r.itl]), "e2e_ms": ms([r.e2e for r in ok]),
               "prompt_tokens_p50": percentiles([r.prompt_tokens for r in ok], (50,))["p50"],
               "output_tokens_range": [min((r.output_tokens for r in ok), default=0),
                                       max((r.output_tokens for r in ok), default=0)],
               "errors": sorted({r.error for r in results if not r.ok})[:5],
               "config": {k: v for k, v in vars(args).items() if k not in ("api_key", "func")}}
    if args.multi_turn:
        summary["per_turn"] = [{"turn": t, "prompt_tokens": percentiles([r.prompt_tokens for r in ok if r.turn == t],
                                                                        (50,))["p50"],
                                "cached_tokens": percentiles([r.cached_tokens for r in ok if r.turn == t],
                                                             (50,))["p50"],
                                "ttft_ms": ms([r.ttft for r in ok if r.turn == t]),
                                "e2e_ms": ms([r.e2e for r in ok if r.turn == t])} for t in range(args.multi_turn)]
    return summary


def check_bench_args(args: Any) -> None:
    """The flags of `bench serve`, before any request."""
    check_at_least(args, {"concurrency": 1, "num_requests": 1, "input_len": 1, "output_len": 1, "multi_turn": 0,
                          "system_len": 0})
    if not (args.request_rate >= 0 and args.request_rate < float("inf")):
        raise ValueError(f"--request-rate must be a finite number ≥ 0 (0: a closed loop), got {args.request_rate}")
    if not 0 <= args.range_ratio < 1:
        raise ValueError(f"--range-ratio must be in [0, 1), got {args.range_ratio}")
    try:
        url = httpx.URL(args.url)
    except httpx.InvalidURL as e:
        raise ValueError(f"--url '{args.url}' is not a URL ({e})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"--url '{args.url}' must look like http://HOST:PORT")
    check_output_file(args.json, "json")


def run_bench(args: Any) -> None:
    check_bench_args(args)
    s = asyncio.run(bench(args))
    print(f"completed {s['completed']}, failed {s['failed']} in {s['wall_s']:.2f} s; "
          f"{s['output_tok_s']:.1f} output tok/s, {s['request_s']:.2f} req/s")
    print(f"{'metric':<8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
    for name in ("ttft", "tpot", "itl", "e2e"):
        p = s[f"{name}_ms"]
        print(f"{name.upper():<8}{p['p50']:>10.2f}{p['p90']:>10.2f}{p['p99']:>10.2f}")
    for t in s.get("per_turn", []):
        print(f"turn {t['turn']:>2}: ~{t['prompt_tokens']:.0f} prompt tokens ({t['cached_tokens']:.0f} cached), "
              f"TTFT p50 {t['ttft_ms']['p50']:.1f} ms "
              f"p99 {t['ttft_ms']['p99']:.1f} ms, E2E p50 {t['e2e_ms']['p50']:.1f} ms")
    for e in s["errors"]:
        print(f"error: {e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=2)
    if s["failed"]:
        raise ValueError(f"{s['failed']} requests failed")
