"""Server overhead on the CPU with the default model: TPOT of the same request through the HTTP server vs
`hd.LLM.generate`, TTFT percentiles at concurrency 1 and 8 (the `hyperdecode bench serve` client), and chunked
prefill off vs on at concurrency 8 (two servers, runs alternated in the same process).

    python bench/serve_overhead.py [--model smollm2] [--tokens 64] [--repeats 3] [--chunk 64] [--long-input 256]
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time

import httpx

import hyperdecode as hd
from hyperdecode.serve.bench import bench, bench_args, stream_request

PROMPT = "Write a short story about a city that never sleeps."


def start_server(model: str, max_batch: int, *extra: str) -> tuple[subprocess.Popen, str]:
    """`hyperdecode serve` in its own process, as deployed: the client here does not share its GIL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hyperdecode.cli", "serve", "--model", model, "--device", "cpu",
                             "--port", str(port), "--max-batch", str(max_batch), "--max-model-len", "2048", *extra])
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
    ap.add_argument("--chunk", type=int, default=64, help="--max-num-batched-tokens of the chunked-prefill server")
    ap.add_argument("--long-input", type=int, default=256, help="prompt words in the chunked-prefill comparison")
    ap.add_argument("--chunked-only", action="store_true", help="only the chunked-prefill comparison")
    args = ap.parse_args()
    if args.chunked_only:
        compare_chunked_prefill(hd.LLM(args.model, device="cpu").name, args)
        return
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
        s = asyncio.run(bench(bench_args(url, model=llm.name, concurrency=concurrency, num_requests=n)))
        print(f"concurrency {concurrency}: {s['completed']} requests, TTFT p50 {s['ttft_ms']['p50']:.1f} ms "
              f"p99 {s['ttft_ms']['p99']:.1f} ms, TPOT p50 {s['tpot_ms']['p50']:.1f} ms, "
              f"{s['output_tok_s']:.1f} output tok/s")
    server.terminate()
    server.wait(timeout=30)
    compare_chunked_prefill(llm.name, args)


def load(url: str, model: str, concurrency: int, n: int, input_len: int, output_len: int, seed: int) -> dict:
    return asyncio.run(bench(bench_args(url, model=model, concurrency=concurrency, num_requests=n,
                                        input_len=input_len, output_len=output_len, seed=seed)))


def compare_chunked_prefill(model: str, args: argparse.Namespace) -> None:
    """Concurrency 8, whole prefills vs chunks of --chunk tokens per step: both servers up, runs alternated."""
    servers = {"off": start_server(args.model, 8), f"on ({args.chunk})": start_server(
        args.model, 8, "--max-num-batched-tokens", str(args.chunk))}
    for _, url in servers.values():
        load(url, model, 2, 2, 8, 4, 0)  # warm-up
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for rep in range(args.repeats):
        for name, (_, url) in servers.items():
            runs[name].append(load(url, model, 8, 16, args.long_input, 32, rep))
    print(f"chunked prefill at concurrency 8, {args.long_input}-word prompts, 32 output tokens, 16 requests "
          f"(median of {args.repeats} alternated runs):")
    for name, results in runs.items():
        def median(key: str, q: str) -> float:
            return statistics.median(r[key][q] for r in results)
        print(f"  {name:<10} ~{results[0]['prompt_tokens_p50']:.0f} prompt tokens | "
              f"TTFT p50 {median('ttft_ms', 'p50'):8.1f} ms p99 {median('ttft_ms', 'p99'):8.1f} ms | "
              f"TPOT p50 {median('tpot_ms', 'p50'):6.1f} ms p99 {median('tpot_ms', 'p99'):6.1f} ms | "
              f"ITL p99 {median('itl_ms', 'p99'):7.1f} ms | "
              f"{statistics.median(r['output_tok_s'] for r in results):6.1f} output tok/s")
    for proc, _ in servers.values():
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
