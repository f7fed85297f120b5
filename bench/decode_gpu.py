"""Decode speed on one GPU: `reference` (eager PyTorch), `graph` (CUDA graphs), `mega` (the megakernel),
`compile` (torch.compile, mode "reduce-overhead"; first batch size only) and transformers eager, on random-weight
models of Llama-3.2-1B's shape and `medium-glm5`, built on the device from a seed.

Correctness first (bf16): the reference decodes greedily; the others are fed the same tokens (teacher forcing, so
one near-tie cannot derail the rest) and must pick the same greedy token at every step with logits within 2e-2
relative, a different pick counting as a near-tie (reported, not a FAIL) when the reference's own margin between the
two tokens is below the step's logit error. Then one table: backend, batch, tok/s, ms/step (end to end, and for
`mega` the kernel alone timed with CUDA events), bytes read per step, MBU against the measured copy bandwidth and
against the 4.8 TB/s datasheet figure, the read-only ceiling (one reduction over as many bytes), and for `mega` the
schedule model's prediction and the compiled kernel's registers and spills (a configuration that spills is dropped).
Long-context rows (default 4K and 32K positions of untimed, unchecked cache, batch 1) time `graph` and `mega` where
DSA's top-k selects. Rows are also written to $OUT/decode_gpu.json as they are measured.

    PYTHONPATH=. python3 bench/decode_gpu.py --out $OUT    # on the GPU (about 8 minutes, JIT compiles included)
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
from hyperdecode.engine.mega.schedule import predict
from hyperdecode.engine.runner import ReferenceRunner
from hyperdecode.model.loader import expected_shapes
from hyperdecode.model.static import static_shapes
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


DATASHEET = 4.8e12  # H200 HBM3e, bytes/s


def read_bandwidth(device: torch.device, nbytes: int, reps: int = 10) -> float:
    """Bytes/s of a read-only stream: one bf16 sum over `nbytes`, best of `reps` (the ceiling a GEMV chain meets)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).uniform_()
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        src.sum(dtype=torch.float32)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return nbytes / best


class CompileRunner(ReferenceRunner):
    """The reference model's S = 1 step through torch.compile ("reduce-overhead": inductor kernels in CUDA graphs)."""

    def __init__(self, model):
        super().__init__(model)
        self.step = torch.compile(model, mode="reduce-overhead", dynamic=False, fullgraph=False)

    def forward(self, tokens, pos, slots, want):
        if tokens.shape[1] != 1 or slots is not None:
            return self.reference(tokens, pos, slots, want)
        with static_shapes():  # the whole cache, masked by position: one shape for every step, as `graph` uses
            return self.model.logits(self.step(tokens, pos)[want])


def kernel_seconds(runner: MegaRunner, reps: int = 20) -> float:
    """The megakernel alone, per step: CUDA events around `reps` launches on the runner's current arenas."""
    B = runner.prog.batch
    tokens = torch.zeros(B, dtype=torch.long, device=runner.device)
    pos = torch.full((B,), runner.prog.max_seq - 1, dtype=torch.long, device=runner.device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    runner.step.run(runner.A, runner.C, tokens, pos)
    start.record()
    for _ in range(reps):
        runner.step.run(runner.A, runner.C, tokens, pos)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def agreement(logits: torch.Tensor, ref: torch.Tensor) -> dict:
    """Greedy picks vs the reference's, judged with the reference's margin: a different pick whose reference margin
    (top logit - the logit of the other pick) is below that position's max logit error is a near-tie."""
    pick, ref_pick = logits.argmax(-1), ref.argmax(-1)
    err = (logits - ref).abs().amax(-1)
    margin = ref.gather(-1, ref_pick[..., None])[..., 0] - ref.gather(-1, pick[..., None])[..., 0]
    flips = pick != ref_pick
    near = flips & (margin <= err)
    rel = ((logits - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    return dict(greedy_agree=1 - flips.float().mean().item(), near_ties=int(near.sum()), max_rel_err=rel,
                ok=bool((flips & ~near).sum() == 0) and rel <= 2e-2)


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
def decode(runner, prompts: torch.Tensor, steps: int, warm: int, forced: torch.Tensor | None = None,
           context: int = 0):
    """Prefills `prompts` [B, P] row by row, then `warm + steps` greedy decode steps (fed `forced` tokens when
    given). Returns (tokens [B, warm + steps], logits [warm + steps, B, V], seconds per timed step). With `context`,
    nothing is prefilled: decoding starts at that position over whatever the cache holds (timing only)."""
    B, P = prompts.shape
    device = prompts.device
    every_row = torch.ones(B, 1, dtype=torch.bool, device=device)
    if context:
        P = context
        runner.setup(B, P + warm + steps + 1)
        tok = prompts[:, :1]
    else:
        runner.setup(B, P + warm + steps + 1)
        last = torch.zeros(1, P, dtype=torch.bool, device=device)
        last[0, -1] = True
        first = torch.cat([runner.forward(prompts[b:b + 1], torch.arange(P, device=device)[None],
                                          torch.tensor([b], device=device), last) for b in range(B)])
        tok = first.argmax(-1)[:, None]
    tokens, logits = [], []
    for i in range(warm + steps):
        if i == warm:
            sync(device)
            t0 = time.perf_counter()
        if forced is not None and i > 0:
            tok = forced[:, i - 1:i].contiguous()  # what the reference fed itself
        out = runner.forward(tok, torch.full((B, 1), P + i, device=device), None, every_row)
        runner.confirm()
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


def mega_compiled(runner: MegaRunner) -> dict:
    """Registers and spill bytes of the megakernel the runner launched (Triton's compiled kernel; GPU only)."""
    compiled = getattr(runner.step, "compiled", None)
    if compiled is None or not hasattr(compiled, "n_spills"):
        return {}
    return dict(registers=compiled.n_regs, spill_bytes=compiled.n_spills)


def measure(backend: str, runner_for, llm, prompts, ref, steps: int, warm: int, context: int) -> dict:
    """One row's timing and checks (ref: the reference's (tokens, logits, seconds) on these prompts, or None for a
    long-context row, which is timed only)."""
    if backend == "reference" and ref is not None:
        return dict(seconds=ref[2])
    if backend == "transformers":
        dtype = llm.model.embed_tokens.weight.dtype
        return dict(seconds=time_hf(hf_model(llm.name, prompts.device, dtype), prompts, steps))
    runner = runner_for[backend]()
    row = {}
    if ref is None:
        _, _, row["seconds"] = decode(runner, prompts, steps, warm, context=context)
    else:
        _, logits, row["seconds"] = decode(runner, prompts, steps, warm, forced=ref[0])
        row.update(agreement(logits, ref[1]))
    if isinstance(runner, MegaRunner):
        row.update(mega_compiled(runner))
        if row.get("spill_bytes"):
            raise RuntimeError(f"the compiled megakernel spills {row['spill_bytes']} bytes: configuration dropped")
        if prompts.device.type == "cuda":
            row["kernel_ms"] = 1e3 * kernel_seconds(runner)
        p = predict(runner.prog, context)
        row.update(predicted_tok_s=p.tokens_per_s, predicted_mbu=p.mbu)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU check of this script on tiny models")
    ap.add_argument("--models", default=None, help="comma-separated presets (default llama-3.2-1b,medium-glm5)")
    ap.add_argument("--backends", default="reference,graph,mega,compile,transformers")
    ap.add_argument("--batches", default=None, help="default 1,8 (smoke: 1,2)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128; smoke 20)")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (default 48; smoke 4)")
    ap.add_argument("--warm", type=int, default=None, help="untimed first steps (default 16; smoke 1)")
    ap.add_argument("--long", default=None, help="long-context rows (graph, mega; batch 1), comma-separated "
                    "positions; default 4096,32768 (smoke: none); 'none' for none")
    ap.add_argument("--mega-configs", default=None,
                    help="extra megakernel configurations timed at batch 1, TILExKBLOCKxWARPSxPER_SM[p] (GEMV output "
                         "rows, GEMV k-chunk, warps per program, programs per SM; p: L2 prefetch before waits); "
                         "default 16x256x4x1,32x256x4x1p,16x128x8x1p (smoke: 16x128x4x1); 'none' for none; the "
                         "plain `mega` row is 16x256, 4 warps (8 above batch 4), 1 per SM, with prefetch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for decode_gpu.json ($OUT)")
    a = ap.parse_args()
    smoke = a.smoke
    models = (a.models or ("tiny-llama,tiny-glm5" if smoke else "llama-3.2-1b,medium-glm5")).split(",")
    batches = [int(b) for b in (a.batches or ("1,2" if smoke else "1,8")).split(",")]
    P, steps, warm = a.prompt or (20 if smoke else 128), a.steps or (4 if smoke else 48), a.warm or (1 if smoke else 16)
    longs = [int(n) for n in (a.long or ("none" if smoke else "4096,32768")).split(",") if n and n != "none"]
    device = torch.device("cpu" if smoke else "cuda")
    dtype = "float32" if smoke else "bfloat16"
    backends = a.backends.split(",")
    sweep = (a.mega_configs or ("16x128x4x1" if smoke else "16x256x4x1,32x256x4x1p,16x128x8x1p")).split(",")
    sweep = [c for c in sweep if c and c != "none"]
    size = (64 if smoke else 1024) * 2**20
    bw, read_bw = copy_bandwidth(device, size), read_bandwidth(device, size)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, copy bandwidth "
          f"{bw / 1e9:.0f} GB/s, read-only {read_bw / 1e9:.0f} GB/s, prompt {P}, {warm} untimed + {steps} timed steps, "
          f"{dtype}", flush=True)
    rows, out = [], Path(a.out) / "decode_gpu.json"
    for name in models:
        t = time.perf_counter()
        llm = hd.LLM(name, device=str(device), dtype=dtype, seed=a.seed)
        print(f"{name}: built in {time.perf_counter() - t:.0f} s", flush=True)
        runner_for = {"reference": lambda: ReferenceRunner(llm.model),
                      "graph": lambda: GraphRunner(llm.model, capture=device.type == "cuda"),
                      "compile": lambda: CompileRunner(llm.model),
                      "mega": lambda: MegaRunner(llm.model)}
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        for c in sweep:
            tile, k_block, warps, per_sm = (int(v) for v in c.rstrip("p").split("x"))
            runner_for[f"mega[{c}]"] = lambda t=tile, k=k_block, w=warps, n=per_sm * sms, p=c.endswith("p"): \
                MegaRunner(llm.model, tile=t, k_block=k, num_warps=w, workers=n, prefetch=p)
        # every backend at every batch first, then the long contexts, then the megakernel sweep at batch 1
        # torch.compile at the first batch size only: its compile (minutes on a GPU) is paid per shape
        plan = [(B, b, 0) for B in batches for b in backends if b != "compile" or B == batches[0]]
        plan += [(1, b, n) for n in longs for b in ("graph", "mega") if b in backends]
        plan += [(1, f"mega[{c}]", 0) for c in sweep if "mega" in backends and 1 in batches]
        refs = {}
        for B, backend, long in plan:
            g = torch.Generator().manual_seed(a.seed + B)
            prompts = torch.randint(0, llm.config.vocab_size, (B, P), generator=g).to(device)
            if not long and B not in refs:
                refs[B] = decode(ReferenceRunner(llm.model), prompts, steps, warm)
            t = time.perf_counter()
            context = (long or P) + warm + steps // 2
            row = dict(model=name, backend=backend, batch=B, dtype=dtype, context=context)
            try:
                row.update(measure(backend, runner_for, llm, prompts, None if long else refs[B], steps, warm,
                                   long))
            except Exception as e:  # one backend failing must not lose the others' numbers
                row.update(error=f"{type(e).__name__}: {e}"[:300])
            s = row.pop("seconds", None)
            if s:
                step_bytes = bytes_per_step(llm.config, B, context, 2 if dtype == "bfloat16" else 4)
                row.update(ms_per_step=1e3 * s, tok_s=B / s, bytes_per_step=step_bytes, copy_gbs=bw / 1e9,
                           mbu=step_bytes / bw / s, mbu_datasheet=step_bytes / DATASHEET / s,
                           roofline_tok_s=B * bw / step_bytes, ceiling_tok_s=B * read_bw / step_bytes)
            row["wall_s"] = time.perf_counter() - t
            rows.append(row)
            out.write_text(json.dumps(rows, indent=1))
            print(format_row(row), flush=True)
        llm = runner_for = refs = None  # free the weights before the next model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\nwrote {out}")


def format_row(r: dict) -> str:
    head = f"{r['model']:14} {r['backend']:22} B={r['batch']:<2} ctx={r['context']:<6}"
    if "error" in r and "tok_s" not in r:
        return f"{head} ERROR {r['error']}"
    check = "" if "greedy_agree" not in r else \
        (f"  greedy {r['greedy_agree']:.3f} (near-ties {r['near_ties']}) rel.err {r['max_rel_err']:.1e} "
         f"{'ok' if r['ok'] else 'FAIL'}")
    mega = "" if "predicted_tok_s" not in r else \
        (f"  kernel {r.get('kernel_ms', float('nan')):.3f} ms, model {r['predicted_tok_s']:.0f} tok/s "
         f"({100 * r['predicted_mbu']:.0f}%), regs {r.get('registers', '-')} spills {r.get('spill_bytes', '-')}")
    return (f"{head} {r['tok_s']:9.1f} tok/s {r['ms_per_step']:8.3f} ms {r['bytes_per_step'] / 1e9:6.3f} GB/step  "
            f"MBU {100 * r['mbu']:5.1f}% (datasheet {100 * r['mbu_datasheet']:5.1f}%)  roofline "
            f"{r['roofline_tok_s']:6.0f}, read ceiling {r['ceiling_tok_s']:6.0f} tok/s{check}{mega}")


if __name__ == "__main__":
    main()
