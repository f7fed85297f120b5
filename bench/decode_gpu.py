"""Decode speed on one GPU: `reference` (eager PyTorch), `graph` (CUDA graphs), `mega` (the megakernel) and
transformers eager, on random-weight models of Llama-3.2-1B's shape and `medium-glm5`, built on the device from a
seed.

Correctness first (bf16): the reference decodes greedily; graph and mega are fed the same tokens (teacher forcing,
so one near-tie cannot derail the rest) and must pick the same greedy token at every step with logits within
2e-2 relative. Then one table: backend, batch, tok/s, ms/step, bytes read per step, measured copy bandwidth and
MBU = (bytes per step / bandwidth) / step time. Rows are also written to $OUT/decode_gpu.json as they are measured.

    PYTHONPATH=. python3 bench/decode_gpu.py --out $OUT    # on the GPU (about 6 minutes, JIT compiles included)
    python bench/decode_gpu.py --smoke     # on the CPU: tiny models, fp32, mega in Triton's interpreter
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

import hyperdecode as hd
from hyperdecode.engine.graph import GraphRunner
from hyperdecode.engine.mega.runner import MegaRunner
from hyperdecode.engine.runner import ReferenceRunner
from hyperdecode.model.loader import expected_shapes
from hyperdecode.model.presets import PRESETS
from hyperdecode.model.sizing import size_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 10) -> float:
    """Bytes/s of a device-to-device copy (read + write), best of `reps`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def bytes_per_step(cfg, batch: int, context: int, weight_bytes: int) -> float:
    """Weights read once per step (for MoE: the expected number of distinct experts the batch picks) + every row's
    cache at `context`."""
    s = size_model(cfg, context=context, weight_bytes=weight_bytes, kv_bytes=weight_bytes)
    experts = sum(math.prod(v) for k, v in expected_shapes(cfg, mtp=False).items() if ".mlp.experts." in k)
    share = cfg.num_experts_per_tok / cfg.n_routed_experts if experts else 0.0
    distinct = 1 - (1 - share) ** batch
    weights = (s.active_params - experts * share + experts * distinct) * weight_bytes
    return weights + batch * s.cache_bytes_per_token


@torch.inference_mode()
def decode(runner, prompts: torch.Tensor, steps: int, warm: int, forced: torch.Tensor | None = None):
    """Prefills `prompts` [B, P] row by row, then `warm + steps` greedy decode steps (fed `forced` tokens when
    given). Returns (tokens [B, warm + steps], logits [warm + steps, B, V], seconds per timed step)."""
    B, P = prompts.shape
    device = prompts.device
    runner.setup(B, P + warm + steps + 1)
    last = torch.zeros(1, P, dtype=torch.bool, device=device)
    last[0, -1] = True
    every_row = torch.ones(B, 1, dtype=torch.bool, device=device)
    first = torch.cat([runner.forward(prompts[b:b + 1], torch.arange(P, device=device)[None],
                                      torch.tensor([b], device=device), last) for b in range(B)])
    tok = first.argmax(-1)[:, None]
    tokens, logits = [], []
    for i in range(warm + steps):
        if i == warm:
            sync(device)
            t0 = time.perf_counter()
        if forced is not None and i > 0:
            tok = forced[:, i - 1:i]  # what the reference fed itself
        out = runner.forward(tok, torch.full((B, 1), P + i, device=device), None, every_row)
        logits.append(out.float())
        tok = out.argmax(-1)[:, None]
        tokens.append(tok)
    sync(device)
    return torch.cat(tokens, 1), torch.stack(logits), (time.perf_counter() - t0) / steps


def hf_model(name: str, device: torch.device, dtype: torch.dtype):
    import transformers
    spec = PRESETS[name].hf_config
    torch.manual_seed(0)
    cfg = {k: v for k, v in spec.items() if k not in ("model_type", "rope_theta")}
    if "rope_parameters" not in cfg:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": spec.get("rope_theta", 10000.0)}
    kinds = {"glm_moe_dsa": "GlmMoeDsa", "deepseek_v32": "DeepseekV32", "llama": "Llama", "qwen3": "Qwen3"}
    kind = kinds[spec["model_type"]]
    conf = getattr(transformers, f"{kind}Config")(**cfg, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    cls = getattr(transformers, f"{kind}ForCausalLM")
    with torch.device(device):
        return cls(conf).to(dtype).eval()


def time_hf(model, prompts: torch.Tensor, steps: int) -> float:
    """Seconds per decode step of transformers' generate: (time for 1 + steps tokens - time for 1) / steps."""
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)

    def run(n: int) -> float:
        sync(prompts.device)
        t = time.perf_counter()
        model.generate(prompts, max_new_tokens=n, min_new_tokens=n, **kw)
        sync(prompts.device)
        return time.perf_counter() - t

    with torch.inference_mode():
        run(4)  # warm-up
        return (run(1 + steps) - run(1)) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU check of this script on tiny models")
    ap.add_argument("--models", default=None, help="comma-separated presets (default llama-3.2-1b,medium-glm5)")
    ap.add_argument("--backends", default="reference,graph,mega,transformers")
    ap.add_argument("--batches", default=None, help="default 1,8 (smoke: 1,2)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128; smoke 20)")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (default 48; smoke 4)")
    ap.add_argument("--warm", type=int, default=None, help="untimed first steps (default 16; smoke 1)")
    ap.add_argument("--mega-configs", default=None,
                    help="extra megakernel configurations timed at batch 1, TILExKBLOCKxWARPSxPER_SM[p] (GEMV output "
                         "rows, GEMV k-chunk, warps per program, programs per SM; p: L2 prefetch before waits); "
                         "default 32x256x4x1,16x512x8x1,16x256x4x2,16x256x4x1p (smoke: 16x128x4x1); 'none' for none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for decode_gpu.json ($OUT)")
    a = ap.parse_args()
    smoke = a.smoke
    models = (a.models or ("tiny-llama,tiny-glm5" if smoke else "llama-3.2-1b,medium-glm5")).split(",")
    batches = [int(b) for b in (a.batches or ("1,2" if smoke else "1,8")).split(",")]
    P, steps, warm = a.prompt or (20 if smoke else 128), a.steps or (4 if smoke else 48), a.warm or (1 if smoke else 16)
    device = torch.device("cpu" if smoke else "cuda")
    dtype = "float32" if smoke else "bfloat16"
    backends = a.backends.split(",")
    sweep = (a.mega_configs or ("16x128x4x1" if smoke else "32x256x4x1,16x512x8x1,16x256x4x2,16x256x4x1p")).split(",")
    sweep = [c for c in sweep if c and c != "none"]
    bw = copy_bandwidth(device, (64 if smoke else 1024) * 2**20)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, copy bandwidth "
          f"{bw / 1e9:.0f} GB/s, prompt {P}, {warm} untimed + {steps} timed steps, {dtype}", flush=True)
    rows, out = [], Path(a.out) / "decode_gpu.json"
    for name in models:
        t = time.perf_counter()
        llm = hd.LLM(name, device=str(device), dtype=dtype, seed=a.seed)
        print(f"{name}: built in {time.perf_counter() - t:.0f} s", flush=True)
        runners = {"reference": lambda: ReferenceRunner(llm.model),
                   "graph": lambda: GraphRunner(llm.model, capture=device.type == "cuda"),
                   "mega": lambda: MegaRunner(llm.model)}
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        for c in sweep:
            tile, k_block, warps, per_sm = (int(v) for v in c.rstrip("p").split("x"))
            runners[f"mega[{c}]"] = lambda t=tile, k=k_block, w=warps, n=per_sm * sms, p=c.endswith("p"): MegaRunner(
                llm.model, tile=t, k_block=k, num_warps=w, workers=n, prefetch=p)
        # every backend at every batch first, then the megakernel sweep at batch 1 (the essential rows come first)
        plan = [(B, b) for B in batches for b in backends]
        plan += [(1, f"mega[{c}]") for c in sweep if "mega" in backends and 1 in batches]
        refs = {}
        for B, backend in plan:
            if B not in refs:
                g = torch.Generator().manual_seed(a.seed + B)
                prompts = torch.randint(0, llm.config.vocab_size, (B, P), generator=g).to(device)
                refs[B] = (prompts, *decode(ReferenceRunner(llm.model), prompts, steps, warm))
            prompts, ref_tokens, ref_logits, ref_s = refs[B]
            t = time.perf_counter()
            context = P + warm + steps // 2
            row = dict(model=name, backend=backend, batch=B, dtype=dtype, context=context)
            try:
                if backend == "reference":
                    s = ref_s
                elif backend == "transformers":
                    s = time_hf(hf_model(name, device, getattr(torch, dtype)), prompts, steps)
                else:
                    _, logits, s = decode(runners[backend](), prompts, steps, warm, forced=ref_tokens)
                    agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
                    err = ((logits - ref_logits).norm(dim=-1) / ref_logits.norm(dim=-1)).max().item()
                    row.update(greedy_agree=agree, max_rel_err=err, ok=agree == 1.0 and err <= 2e-2)
            except Exception as e:  # one backend failing must not lose the others' numbers
                row.update(error=f"{type(e).__name__}: {e}"[:300])
                s = None
            if s:
                step_bytes = bytes_per_step(llm.config, B, context, 2 if dtype == "bfloat16" else 4)
                row.update(ms_per_step=1e3 * s, tok_s=B / s, bytes_per_step=step_bytes, copy_gbs=bw / 1e9,
                           mbu=step_bytes / bw / s, roofline_tok_s=B * bw / step_bytes)
            row["wall_s"] = time.perf_counter() - t
            rows.append(row)
            out.write_text(json.dumps(rows, indent=1))
            print(format_row(row), flush=True)
        llm = runners = None  # free the weights before the next model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\nwrote {out}")


def format_row(r: dict) -> str:
    if "error" in r and "tok_s" not in r:
        return f"{r['model']:14} {r['backend']:22} B={r['batch']:<2} ERROR {r['error']}"
    check = "" if "greedy_agree" not in r else \
        f"  greedy {r['greedy_agree']:.3f} rel.err {r['max_rel_err']:.1e} {'ok' if r['ok'] else 'FAIL'}"
    return (f"{r['model']:14} {r['backend']:22} B={r['batch']:<2} {r['tok_s']:9.1f} tok/s {r['ms_per_step']:8.2f} ms "
            f"{r['bytes_per_step'] / 1e9:6.3f} GB/step  MBU {100 * r['mbu']:5.1f}%  roofline "
            f"{r['roofline_tok_s']:8.0f} tok/s{check}")


if __name__ == "__main__":
    main()
