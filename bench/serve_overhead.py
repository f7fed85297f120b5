"""Server overhead on the CPU with the default model: TPOT of the same request through the HTTP server vs
`hd.LLM.generate`, and TTFT percentiles at concurrency 1 and 8 (the `hyperdecode bench serve` client).

    python bench/serve_overhead.py [--model smollm2] [--tokens 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

import httpx

import hyperdecode as hd
from hyperdecode.serve.bench import bench, stream_request

PROMPT = "Write a short story about a city that never sleeps."


def start_server(model: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    """`hyperdecode serve` in its own process, as deployed: the client here does not share its GIL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hyperdecode.cli", "serve", "--model", model, "--device", "cpu",
                             "--port", str(port), "--max-batch", str(max_batch), "--max-model-len", "2048"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=30).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become healthy")


async def server_tpot(url: str, model: str, tokens: int) -> float:
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        r = await stream_request(c, "/v1/completions", body, {})
    assert r.ok and r.output_tokens == tokens, r.error
    return r.tpot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    llm = hd.LLM(args.model, device="cpu")
    llm.generate(PROMPT, max_tokens=4)  # warm-up
    server, url = start_server(args.model, max_batch=8)
    asyncio.run(server_tpot(url, llm.name, 4))  # warm-up
    offline, online = [], []
    for _ in range(args.repeats):  # alternate, so that machine noise hits both alike
        offline.append(llm.generate(PROMPT, max_tokens=args.tokens, ignore_eos=True).stats.tpot_s)
        online.append(asyncio.run(server_tpot(url, llm.name, args.tokens)))
    off, on = min(offline), min(online)
    print(f"{args.model}, CPU, batch 1, {args.tokens} greedy tokens (best of {args.repeats})")
    print(f"TPOT hd.LLM.generate {off * 1e3:.2f} ms | through the server {on * 1e3:.2f} ms | "
          f"overhead {100 * (on / off - 1):+.1f} %")
    for concurrency, n in ((1, 8), (8, 16)):
        ns = argparse.Namespace(url=url, model=llm.name, concurrency=concurrency, num_requests=n, input_len=32,
                                output_len=32, multi_turn=0, api_key=None, seed=0, json=None)
        s = asyncio.run(bench(ns))
        print(f"concurrency {concurrency}: {s['completed']} requests, TTFT p50 {s['ttft_ms']['p50']:.1f} ms "
              f"p99 {s['ttft_ms']['p99']:.1f} ms, TPOT p50 {s['tpot_ms']['p50']:.1f} ms, "
              f"{s['output_tok_s']:.1f} output tok/s")
    server.terminate()
    server.wait(timeout=30)


if __name__ == "__main__":
    main()
