"""SmolLM2-135M on the CPU, batch 1: hyperdecode (its default: backend auto, i.e. the native decode step over the
quantized weights, activations as `auto` picks them; the same with int8 activations; the reference forward over the
same quantized weights; the dequantized reference), transformers and llama.cpp on the same GGUF, each in its own
process, alternated, best of N. The CPU's model and vector flags are printed first, and each hyperdecode row names
the kernel path it ran (model/csrc/qmatmul.c's ISA headers); `--isa x86-64-v3,...` measures the default and int8
rows again with the kernels built for those targets (e.g. the AVX2 path on an AVX-512 machine).

Per engine: decode tok/s (64 greedy tokens after a short prompt), TTFT of a 500-token prompt, the cold command's
time to its first token (a fresh process: import, load, first token; hyperdecode's second run, which reads its
converted cache) and peak RSS. llama.cpp runs through llama-cpp-python, installed into its own environment
(`--llama-venv`, built from source once: several minutes) and never a dependency of the package; without it
(`--no-llama`) its rows are left out.

    python bench/cpu_decode.py [--repeats 3] [--threads 2] [--tokens 64] [--no-llama] [--isa native,x86-64-v3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

LONG_PROMPT_TOKENS = 500
ENGINES = ("hyperdecode", "hyperdecode-int8", "hyperdecode-quant-ref", "hyperdecode-reference", "transformers",
           "llama.cpp")
HYPERDECODE = {"hyperdecode": ("auto", "auto", "auto"), "hyperdecode-int8": ("auto", "auto", "int8"),
               "hyperdecode-quant-ref": ("reference", "auto", "fp32"),
               "hyperdecode-reference": ("reference", "none", "fp32")}  # engine: (backend, quantize, activations)
PER_ISA = ("hyperdecode", "hyperdecode-int8")  # measured again for each extra --isa target
VECTOR_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "asimd", "asimddp")


def prompts() -> tuple[list[int], list[int]]:
    """A short prompt, and one of exactly 500 tokens (a passage repeated and cut), as SmolLM2's token ids."""
    from hyperdecode.model.loader import load_model
    tokenizer_encode = load_model("smollm2", device="cpu", quantize="auto").tokenizer.encode  # the converted cache
    short = tokenizer_encode("The history of the city of Paris begins")
    text = ("Paris is the capital and largest city of France. It is located on the Seine river, in the north of "
            "the country, and has been one of Europe's major centres of finance, diplomacy, commerce, culture, "
            "fashion and gastronomy for centuries. ") * 20
    long = tokenizer_encode(text)[:LONG_PROMPT_TOKENS]
    assert len(long) == LONG_PROMPT_TOKENS
    return short, long


def run_hyperdecode(args: argparse.Namespace, backend: str, quantize: str, activations: str) -> dict:
    import torch
    import hyperdecode as hd
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    llm = hd.LLM("smollm2", device="cpu", backend=backend, quantize=quantize, activations=activations)
    load = time.perf_counter() - start
    short, long = args.prompts
    llm.generate(short, max_tokens=args.tokens, ignore_eos=True)  # warm-up, as long as the measured run
    out = llm.generate(short, max_tokens=args.tokens, ignore_eos=True)
    decode = out.stats.tokens_per_s
    llm.reset_prefix_cache()
    t = time.perf_counter()
    llm.generate(long, max_tokens=1)
    ttft = time.perf_counter() - t
    return {"decode_tok_s": decode, "ttft_500_s": ttft, "load_s": load, "tokens": out.token_ids,
            "backend": llm.backend_label}


def run_transformers(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from hyperdecode.model.embedded import smollm2_path
    torch.set_num_threads(args.threads)
    path = smollm2_path()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    load = time.perf_counter() - start
    short, long = args.prompts
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(torch.tensor([short]), max_new_tokens=args.tokens, min_new_tokens=args.tokens, **kw)
        t = time.perf_counter()
        model.generate(torch.tensor([short]), max_new_tokens=1, min_new_tokens=1, **kw)
        first = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(torch.tensor([short]), max_new_tokens=args.tokens, min_new_tokens=args.tokens, **kw)
        e2e = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(torch.tensor([long]), max_new_tokens=1, min_new_tokens=1, **kw)
        ttft = time.perf_counter() - t
    return {"decode_tok_s": (args.tokens - 1) / (e2e - first), "ttft_500_s": ttft, "load_s": load,
            "tokens": out[0, len(short):].tolist()}


LLAMA_DRIVER = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
short, long = json.loads(sys.argv[4]), json.loads(sys.argv[5])
t = time.perf_counter()
llm = Llama(model_path=path, n_threads=threads, n_ctx=1024, verbose=False)
load = time.perf_counter() - t
def run(prompt, k):
    llm.reset()
    out, t0, first = [], time.perf_counter(), None
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if first is None:
            first = time.perf_counter() - t0
        out.append(tok)
        if len(out) == k:
            break
    return out, first, time.perf_counter() - t0
run(short, n)
out, first, e2e = run(short, n)
_, ttft, _ = run(long, 1)
print(json.dumps({"decode_tok_s": (n - 1) / (e2e - first), "ttft_500_s": ttft, "load_s": load, "tokens": out}))
"""


def llama_python(venv: Path, install: bool) -> Path | None:
    python = venv / "bin" / "python"
    found = python.exists() and subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True)
    if found and found.returncode == 0:
        return python
    if not install:
        return None
    print(f"installing llama-cpp-python into {venv} (a source build: several minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "llama-cpp-python"], check=True,
                   env={**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=ON"})
    return python


def child(args: argparse.Namespace) -> None:
    """One engine's figures as a JSON line (run in a process of its own, so that RSS is its own)."""
    args.prompts = json.loads(args.prompt_ids)
    if args.engine in HYPERDECODE:
        out = run_hyperdecode(args, *HYPERDECODE[args.engine])
    else:
        out = run_transformers(args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(row: str, args: argparse.Namespace, llama: Path | None, short: list[int], long: list[int]) -> dict:
    """One row's figures from a fresh process; a row is an engine, or "engine@isa" for an extra kernel target."""
    engine, _, isa = row.partition("@")
    env = {**os.environ, "HYPERDECODE_ISA": isa} if isa else None
    if engine == "llama.cpp":
        from hyperdecode.model.embedded import smollm2_path
        cmd = [str(llama), "-c", LLAMA_DRIVER, str(smollm2_path()), str(args.threads), str(args.tokens),
               json.dumps(short), json.dumps(long)]
        cmd = ["/usr/bin/time", "-f", "%M", *cmd] if Path("/usr/bin/time").exists() else cmd
    else:
        cmd = [sys.executable, __file__, "--child", engine, "--threads", str(args.threads), "--tokens",
               str(args.tokens), "--prompt-ids", json.dumps([short, long])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if r.returncode:
        raise RuntimeError(f"{row}: {r.stderr.strip()[-800:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if engine == "llama.cpp" and cmd[0] == "/usr/bin/time":
        out["peak_rss_mb"] = int(r.stderr.strip().splitlines()[-1]) / 1024
    return out


def cold_first_token(engine: str, args: argparse.Namespace, llama: Path | None) -> float:
    """Seconds from starting a fresh command to its first generated token (hyperdecode's CLI; llama.cpp's Python
    binding with the same prompt)."""
    if engine == "hyperdecode":
        cmd = [sys.executable, "-m", "hyperdecode", "generate", "The capital of France is", "--device", "cpu",
               "--max-tokens", "1"]
    elif engine == "llama.cpp":
        from hyperdecode.model.embedded import smollm2_path
        code = ("import sys; from llama_cpp import Llama; "
                "llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), verbose=False); "
                "print(llm('The capital of France is', max_tokens=1)['choices'][0]['text'])")
        cmd = [str(llama), "-c", code, str(smollm2_path()), str(args.threads)]
    else:
        return float("nan")
    subprocess.run(cmd, capture_output=True, timeout=600)  # the first run converts / warms the page cache
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, timeout=600, check=True)
    return time.perf_counter() - t


def build_seconds() -> float:
    """Seconds to build the CPU kernels (the quantized matmul and the native decode step) into an empty cache: what
    the first run on a machine pays once (timed inside a fresh process, after its imports)."""
    import tempfile
    code = ("import time; from hyperdecode.model.quant import kernel_library; t = time.perf_counter(); "
            "kernel_library(); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                           env={**os.environ, "HYPERDECODE_CACHE": cache})
    return float(r.stdout.strip().splitlines()[-1])


def cpu_line() -> str:
    """The CPU's model and the vector flags the kernels choose by."""
    import platform
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == (platform.processor() or platform.machine()):
                model = value.strip()
            if key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    found = [f for f in VECTOR_FLAGS if f in flags]
    shown = " ".join(found) or "none of " + ", ".join(VECTOR_FLAGS)
    return f"CPU: {model}, {os.cpu_count()} CPUs, vector flags: {shown}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=3, help="rounds, engines alternated; the best counts")
    ap.add_argument("--no-llama", action="store_true", help="leave llama.cpp out")
    ap.add_argument("--llama-venv", default=str(Path.home() / ".cache" / "hyperdecode" / "llama-cpp-venv"))
    ap.add_argument("--isa", default="native",
                    help="kernel targets (-march values, comma-separated) for the hyperdecode default and int8 rows: "
                         "the first for every hyperdecode row, the others as extra rows (e.g. native,x86-64-v3)")
    ap.add_argument("--child", choices=ENGINES[:-1], dest="engine", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        return child(args)
    first, *extra = args.isa.split(",")
    os.environ["HYPERDECODE_ISA"] = first
    short, long = prompts()
    llama = None if args.no_llama else llama_python(Path(args.llama_venv), install=True)
    engines = [e for e in ENGINES if e != "llama.cpp" or llama is not None]
    engines[2:2] = [f"{e}@{isa}" for isa in extra for e in PER_ISA]
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for engine in engines:
            got = measure(engine, args, llama, short, long)
            old = best.get(engine)
            best[engine] = got if old is None else {
                "decode_tok_s": max(old["decode_tok_s"], got["decode_tok_s"]),
                "ttft_500_s": min(old["ttft_500_s"], got["ttft_500_s"]),
                "load_s": min(old["load_s"], got["load_s"]),
                "peak_rss_mb": max(old["peak_rss_mb"], got["peak_rss_mb"]), "tokens": got["tokens"],
                "backend": got.get("backend")}
    cold = {e: min(cold_first_token(e, args, llama) for _ in range(args.repeats)) for e in ("hyperdecode", "llama.cpp")
            if e in engines}
    build = build_seconds()
    reference = best["hyperdecode-reference"]["tokens"]
    print(cpu_line())
    print(f"SmolLM2-135M-Instruct Q4_1 GGUF, batch 1, {args.threads} threads, best of {args.repeats} alternated, "
          f"kernels built for -march={first}")
    print(f"{'engine':<34}{'backend':>46}{'decode tok/s':>13}{'TTFT 500 ms':>13}{'cold 1st tok s':>15}"
          f"{'peak RSS MB':>13}{'agree':>7}")
    for engine in engines:
        b = best[engine]
        agree = next((i for i, (x, y) in enumerate(zip(b["tokens"], reference)) if x != y), len(reference))
        print(f"{engine:<34}{b.get('backend') or '':>46}{b['decode_tok_s']:>13.1f}{1e3 * b['ttft_500_s']:>13.0f}"
              f"{cold.get(engine, float('nan')):>15.2f}{b['peak_rss_mb']:>13.0f}{agree:>7}")
    print(f"building the CPU kernels (quantized matmul + native step) into an empty cache, once per machine: "
          f"{build:.1f} s")
    if "llama.cpp" in best:
        theirs = best["llama.cpp"]
        for engine in [e for e in engines if e.partition("@")[0] in PER_ISA]:
            ours = best[engine]
            print(f"{engine} / llama.cpp: decode {ours['decode_tok_s'] / theirs['decode_tok_s']:.2f}x, "
                  f"TTFT {ours['ttft_500_s'] / theirs['ttft_500_s']:.2f}x (goal: >= 1.0x and <= 1.0x)")


if __name__ == "__main__":
    main()
