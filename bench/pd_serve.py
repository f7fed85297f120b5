"""Colocated vs disaggregated serving on this machine: the same open-loop load (`bench serve`: Poisson arrivals,
mixed prompt and output lengths) against one server, then against a prefill instance + a decode instance behind
vllm-router's PD mode. Reports TTFT / ITL p50 / p99 of both, the transfer time per MB (the decode side's NIXL
histograms) and the decode side's TTFT split.

    python bench/pd_serve.py [--model smollm2] [--num-requests 24] [--request-rate 0.5] [--input-len 400]
                             [--output-len 64] [--range-ratio 0.5] [--json FILE]

Threads: the colocated server gets `--threads` (all cores by default); the prefill and decode instances get half
each, so both setups use the same cores. On one machine the two instances still share memory bandwidth and caches.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hyperdecode.serve.bench import bench, bench_args

KV = '{"kv_connector": "NixlConnector", "kv_role": "%s", "kv_port": 0}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], url: str, log: Path, within_s: float = 300) -> subprocess.Popen:
    """A process serving HTTP at `url`, once /health answers 200 (its output in `log`)."""
    proc = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {proc.returncode}: see {log}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{' '.join(args[:4])} was not ready within {within_s} s: see {log}")


def server(model: str, threads: int, log: Path, role: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "hyperdecode", "serve", "--model", model, "--device", "cpu", "--port", str(port),
            "--max-batch", "8", "--max-model-len", "2048", "--threads", str(threads)]
    if role:
        args += ["--kv-transfer-config", KV % role]
    url = f"http://127.0.0.1:{port}"
    return launch(args, url, log), url


def router(prefill: str, decode: str, log: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("vllm-router")
    if exe is None:
        raise SystemExit("vllm-router is not installed: pip install -e '.[pd]'")
    port = free_port()
    args = [exe, "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
            "--vllm-pd-disaggregation", "--kv-connector", "nixl", "--prefill", prefill, "--decode", decode,
            "--request-timeout-secs", "600"]
    url = f"http://127.0.0.1:{port}"
    return launch(args, url, log), url


def metrics(url: str) -> dict[str, float]:
    """Prometheus samples summed by name and `part` label (other labels, such as the model's name, folded)."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base, _, labels = name.partition("{")
        part = [kv.split("=", 1)[1].strip('"') for kv in labels.rstrip("}").split(",") if kv.startswith("part=")]
        key = f"{base}|part={part[0]}" if part else base
        out[key] = out.get(key, 0.0) + float(value)
    return out


def load(url: str, args: argparse.Namespace) -> dict:
    asyncio.run(bench(bench_args(url, num_requests=2, input_len=16, output_len=4)))  # warm-up
    return asyncio.run(bench(bench_args(url, concurrency=8, num_requests=args.num_requests,
                                        request_rate=args.request_rate, input_len=args.input_len,
                                        output_len=args.output_len, range_ratio=args.range_ratio, seed=args.seed)))


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_line() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = " ".join(f for f in value.split() if f.startswith(("avx", "fma", "f16c", "asimd", "sve")))
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} logical cores; vector flags: {flags or 'unknown'}"


def row(name: str, s: dict) -> str:
    t, i = s["ttft_ms"], s["itl_ms"]
    return (f"{name:<14}{s['completed']:>5}{s['failed']:>5}{t['p50']:>10.1f}{t['p99']:>10.1f}{i['p50']:>9.1f}"
            f"{i['p99']:>9.1f}{s['output_tok_s']:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--num-requests", type=int, default=24)
    ap.add_argument("--request-rate", type=float, default=0.5)
    ap.add_argument("--input-len", type=int, default=400, help="prompt words (about as many tokens)")
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--range-ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logs", default="/tmp/pd_serve_logs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    print(cpu_line())
    one, url = server(args.model, args.threads, logs / "colocated.log")
    try:
        colocated = load(url, args)
    finally:
        stop(one)
    half = max(1, args.threads // 2)
    prefill, p_url = server(args.model, half, logs / "prefill.log", "kv_producer")
    decode, d_url = server(args.model, half, logs / "decode.log", "kv_consumer")
    front, r_url = router(p_url, d_url, logs / "router.log")
    try:
        disaggregated = load(r_url, args)
        m = metrics(d_url)
    finally:
        stop(front, decode, prefill)
    mb = m.get("vllm:nixl_bytes_transferred_sum", 0) / 1e6
    xfer_s = m.get("vllm:nixl_xfer_time_seconds_sum", 0.0)
    split = {part: m.get(f"hyperdecode:pd_ttft_split_seconds_sum|part={part}", 0.0) /
             max(1.0, m.get(f"hyperdecode:pd_ttft_split_seconds_count|part={part}", 1.0))
             for part in ("prefill", "queue", "transfer", "first_step")}
    print(f"{args.model}: {args.num_requests} requests at {args.request_rate}/s (Poisson), prompts "
          f"{args.input_len}±{args.range_ratio:.0%} words, outputs {args.output_len}±{args.range_ratio:.0%} tokens")
    print(f"{'setup':<14}{'ok':>5}{'fail':>5}{'TTFT p50':>10}{'p99':>10}{'ITL p50':>9}{'p99':>9}{'tok/s':>9}  (ms)")
    print(row("colocated", colocated))
    print(row("disaggregated", disaggregated))
    print(f"transfers: {mb:.1f} MB in {xfer_s * 1e3:.1f} ms of NIXL READs = {1e3 * xfer_s / max(mb, 1e-9):.2f} ms/MB "
          f"({mb / max(xfer_s, 1e-9) / 1e3:.2f} GB/s); mean TTFT split (ms): " +
          ", ".join(f"{k} {v * 1e3:.1f}" for k, v in split.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_line(), "colocated": colocated,
                                               "disaggregated": disaggregated, "transfer_mb": mb,
                                               "transfer_s": xfer_s, "ttft_split_s": split}, indent=2))


if __name__ == "__main__":
    main()
