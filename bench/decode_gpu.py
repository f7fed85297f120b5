"""Decode speed on one GPU: `reference` (eager PyTorch), `graph` (CUDA graphs), `mega` (the megakernel),
`compile` (torch.compile, mode "reduce-overhead"; first batch size only) and transformers eager, on random-weight
models of Llama-3.2-1B's shape and `medium-glm5`, built on the device from a seed. bench/gpu_phases.py runs it phase
by phase, each in a process of its own; alone it runs what its flags name.

Correctness first (bf16): the reference decodes greedily; the others are fed the same tokens (teacher forcing, so
one near-tie cannot derail the rest) and must pick the same greedy token at every step with logits within 3e-2
relative of the bf16 reference (bf16 against fp32 accumulation on the same weights differs by 2.4-2.8e-2 per step on
Llama-3.2-1B's shape), a different pick counting as a near-tie (reported, not a FAIL) when the reference's own margin
between the two tokens is below the step's logit error. `mega` accumulates in fp32, so it is judged exactly against
the reference in fp32 over the same bf16 weights: logits within 1e-3 relative (`exact_rel_err`, `exact_ok`); the bf16
figures are for information. Then one table: backend, batch, tok/s, ms/step (end to end, and for `mega` the kernel
alone timed with CUDA events), bytes read per step, MBU against the measured copy bandwidth and against the
datasheet figure of the device's row in the hardware table (hyperdecode/hardware.py), the read-only ceiling (one
reduction over as many bytes), and for `mega` the schedule model's prediction at the measured bandwidth and the
compiled kernel's registers and spills, known before the row runs (a configuration that spills is reported, not
run). Long-context rows (default 4K and 32K positions of untimed, unchecked cache, batch 1) time `graph` and `mega`
where DSA's top-k selects. Rows are written to $OUT/decode_gpu.json ($OUT/<phase>.json with --phase), and with --jsonl
appended to that file as JSON lines the moment each exists.

    PYTHONPATH=. python3 bench/decode_gpu.py --out $OUT    # on the GPU (about 8 minutes, JIT compiles included)
    python bench/decode_gpu.py --smoke     # on the CPU: tiny models, fp32, mega in Triton's interpreter
    python bench/decode_gpu.py --env       # the environment row only (GPU, versions, bandwidths, table row)
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

import hyperdecode as hd
from hyperdecode.engine.graph import GraphRunner
from hyperdecode.engine.mega.runner import MegaRunner
from hyperdecode.engine.mega.schedule import Hardware, predict
from hyperdecode.errors import ConfigError
from hyperdecode.hardware import Machine, for_device
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


BF16_BOUND = 3e-2  # bf16 compute against the bf16 reference: rounding alone reaches 2.4-2.8e-2
EXACT_BOUND = 1e-3  # the megakernel (fp32 accumulation) against the fp32 reference over the same bf16 weights


def device_row(device: torch.device) -> Machine | None:
    """The hardware table's row for this device (None for a GPU the table does not know)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    try:
        return for_device(name)
    except ConfigError:
        return None


def environment(device: torch.device, copy_bw: float, read_bw: float) -> dict:
    """What the numbers depend on: the device, its table row, the software's versions and the bandwidths measured."""
    import triton
    row = dict(phase_kind="env", python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
               hyperdecode=hd.__version__, hyperdecode_from=str(Path(hd.__file__).parent), copy_gbs=copy_bw / 1e9,
               read_gbs=read_bw / 1e9)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        row.update(gpu=torch.cuda.get_device_name(device), sms=p.multi_processor_count,
                   l2_bytes=getattr(p, "L2_cache_size", None), memory_bytes=p.total_memory, cuda=torch.version.cuda,
                   capability=f"{p.major}.{p.minor}")
    else:
        row.update(gpu="cpu (dry run)", sms=0)
    table = device_row(device)
    row.update(table_row=table.name if table else None, datasheet_tbps=table.hbm_tbps if table else None,
               table_copy_tbps=table.copy_tbps if table else None)
    return row


class Rows:
    """Where rows go: the JSON list of this run ($OUT/decode_gpu.json), rewritten after each row, and with `jsonl`
    one JSON line per row appended, flushed and synced the moment it exists (a later crash loses none)."""

    def __init__(self, out: Path, jsonl: Path | None, phase: str | None):
        self.out, self.jsonl, self.phase, self.rows = out, jsonl, phase, []

    def add(self, row: dict) -> None:
        if self.phase:
            row = {"phase": self.phase, **row}
        self.rows.append(row)
        self.out.write_text(json.dumps(self.rows, indent=1))
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())


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


def agreement(logits: torch.Tensor, ref: torch.Tensor, bound: float = BF16_BOUND) -> dict:
    """Greedy picks vs the reference's, judged with the reference's margin: a different pick whose reference margin
    (top logit - the logit of the other pick) is below that position's max logit error is a near-tie."""
    pick, ref_pick = logits.argmax(-1), ref.argmax(-1)
    err = (logits - ref).abs().amax(-1)
    margin = ref.gather(-1, ref_pick[..., None])[..., 0] - ref.gather(-1, pick[..., None])[..., 0]
    flips = pick != ref_pick
    near = flips & (margin <= err)
    rel = ((logits - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    return dict(greedy_agree=1 - flips.float().mean().item(), near_ties=int(near.sum()), max_rel_err=rel,
                ok=bool((flips & ~near).sum() == 0) and rel <= bound)


def fp32_reference(llm, prompts: torch.Tensor, forced: torch.Tensor, steps: int, warm: int) -> torch.Tensor:
    """The reference's logits in fp32 over the same (bf16) weights, fed the bf16 reference's tokens: the oracle of a
    kernel that accumulates in fp32."""
    model = copy.deepcopy(llm.model).float()
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: a true fp32 oracle
    try:
        return decode(ReferenceRunner(model), prompts, steps, warm, forced=forced)[1]
    finally:
        torch.set_float32_matmul_precision(previous)
        del model


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
    """Prefills `prompts` [B, P] row by row, then `warm + steps` greedy decode steps, or steps fed the tokens of
    `forced` [B, warm + steps] (another run's fed tokens: teacher forcing). Returns (the tokens fed [B, warm + steps],
    logits [warm + steps, B, V], seconds per timed step). With `context`, nothing is prefilled: decoding starts at
    that position over whatever the cache holds (timing only)."""
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
    fed, logits = [], []
    for i in range(warm + steps):
        if i == warm:
            sync(device)
            t0 = time.perf_counter()
        if forced is not None:
            tok = forced[:, i:i + 1].contiguous()  # what the other run fed itself at this step
        fed.append(tok)
        out = runner.forward(tok, torch.full((B, 1), P + i, device=device), None, every_row)
        runner.confirm()
        logits.append(out.float())
        tok = out.argmax(-1)[:, None]
    sync(device)
    return torch.cat(fed, 1), torch.stack(logits), (time.perf_counter() - t0) / steps


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


def measure(backend: str, runner_for, llm, prompts, ref, steps: int, warm: int, context: int,
            hw: Hardware | None) -> dict:
    """One row's timing and checks (ref: the reference's (tokens, logits, seconds, fp32 logits) on these prompts, or
    None for a long-context row, which is timed only)."""
    if backend == "reference" and ref is not None:
        return dict(seconds=ref[2])
    if backend == "transformers":
        dtype = llm.model.embed_tokens.weight.dtype
        return dict(seconds=time_hf(hf_model(llm.name, prompts.device, dtype), prompts, steps))
    runner = runner_for[backend]()
    row = {}
    if isinstance(runner, MegaRunner) and prompts.device.type == "cuda":  # registers and spills before any step
        B, P = prompts.shape
        runner.setup(B, (context or P) + warm + steps + 1)
        row.update(runner.kernel_resources())
        if row["spill_bytes"]:
            raise Spills(f"the compiled megakernel spills {row['spill_bytes']} bytes ({row['registers']} registers): "
                         "configuration reported, not run")
    if ref is None:
        _, _, row["seconds"] = decode(runner, prompts, steps, warm, context=context)
    else:
        _, logits, row["seconds"] = decode(runner, prompts, steps, warm, forced=ref[0])
        row.update(agreement(logits, ref[1]))
        if isinstance(runner, MegaRunner) and ref[3] is not None:
            exact = agreement(logits, ref[3], EXACT_BOUND)
            row.update(exact_rel_err=exact["max_rel_err"], exact_agree=exact["greedy_agree"], exact_ok=exact["ok"])
    if isinstance(runner, MegaRunner):
        if prompts.device.type == "cuda":
            row["kernel_ms"] = 1e3 * kernel_seconds(runner)
        p = predict(runner.prog, context, hw=hw) if hw else predict(runner.prog, context)
        row.update(predicted_tok_s=p.tokens_per_s, predicted_mbu=p.mbu)
    return row


def parse_config(text: str) -> dict:
    """A megakernel configuration TILExKBLOCKxWARPSxPER_SM[xSTAGES][p] (GEMV output rows, its k-chunk, warps per
    program, programs per SM, chunks in flight; p: L2 prefetch before waits) as MegaRunner's arguments (workers per
    SM)."""
    fields = [int(v) for v in text.rstrip("p").split("x")]
    if len(fields) not in (4, 5):
        raise ValueError(f"megakernel configuration '{text}': expected TILExKBLOCKxWARPSxPER_SM[xSTAGES][p]")
    tile, k_block, warps, per_sm = fields[:4]
    return dict(tile=tile, k_block=k_block, num_warps=warps, per_sm=per_sm, stages=fields[4] if len(fields) == 5
                else None, prefetch=text.endswith("p"))


def runners_for(llm, device: torch.device, sweep: list[str], max_spin: int, workers: int | None) -> dict:
    """Backend name -> a maker of its runner over `llm`'s model (each named explicitly: no `auto` here)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    made = {"reference": lambda: ReferenceRunner(llm.model),
            "graph": lambda: GraphRunner(llm.model, capture=device.type == "cuda"),
            "compile": lambda: CompileRunner(llm.model),
            "mega": lambda: MegaRunner(llm.model, max_spin=max_spin, workers=workers)}
    for c in sweep:
        conf = parse_config(c)
        per_sm = conf.pop("per_sm")
        made[f"mega[{c}]"] = lambda conf=conf, n=workers or per_sm * sms: MegaRunner(llm.model, workers=n,
                                                                                     max_spin=max_spin, **conf)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU check of this script on tiny models")
    ap.add_argument("--env", action="store_true", help="the environment row only")
    ap.add_argument("--models", default=None, help="comma-separated presets (default llama-3.2-1b,medium-glm5)")
    ap.add_argument("--backends", default="reference,graph,mega,compile,transformers")
    ap.add_argument("--batches", default=None, help="default 1,8 (smoke: 1,2)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128; smoke 20)")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (default 48; smoke 4)")
    ap.add_argument("--warm", type=int, default=None, help="untimed first steps (default 16; smoke 1)")
    ap.add_argument("--long", default=None, help="long-context rows (graph, mega; batch 1), comma-separated "
                    "positions; default 4096,32768 (smoke: none); 'none' for none")
    ap.add_argument("--mega-configs", default=None,
                    help="extra megakernel configurations timed at batch 1, TILExKBLOCKxWARPSxPER_SM[xSTAGES][p] "
                         "(GEMV output rows, GEMV k-chunk, warps per program, programs per SM, chunks in flight; "
                         "p: L2 prefetch before waits); default 16x256x4x1,32x256x4x1p,16x128x8x1p (smoke: "
                         "16x128x4x1); 'none' for none; the plain `mega` row is 16x256, 4 warps (8 above batch 4), "
                         "1 per SM, 4 stages, with prefetch")
    ap.add_argument("--long-only", action="store_true", help="only the long-context rows")
    ap.add_argument("--max-spin", type=int, default=1_000_000,
                    help="polls of a dependency before a megakernel step stops with an error instead of hanging")
    ap.add_argument("--workers", type=int, default=None, help="megakernel programs in all (default one per SM)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for decode_gpu.json ($OUT)")
    ap.add_argument("--jsonl", default=None, help="also append each row to this file as a JSON line, at once")
    ap.add_argument("--phase", default=None, help="a name recorded in every row (bench/gpu_phases.py)")
    a = ap.parse_args()
    smoke = a.smoke
    device = torch.device("cpu" if smoke else "cuda")
    rows = Rows(Path(a.out) / f"{a.phase or 'decode_gpu'}.json", Path(a.jsonl) if a.jsonl else None, a.phase)
    size = (64 if smoke else 1024) * 2**20
    bw, read_bw = copy_bandwidth(device, size), read_bandwidth(device, size)
    table = device_row(device)
    if a.env:
        env = environment(device, bw, read_bw)
        rows.add(env)
        print(json.dumps(env), flush=True)
        return
    models = (a.models or ("tiny-llama,tiny-glm5" if smoke else "llama-3.2-1b,medium-glm5")).split(",")
    batches = [int(b) for b in (a.batches or ("1,2" if smoke else "1,8")).split(",")]
    P, steps, warm = a.prompt or (20 if smoke else 128), a.steps or (4 if smoke else 48), a.warm or (1 if smoke else 16)
    longs = [int(n) for n in (a.long or ("none" if smoke else "4096,32768")).split(",") if n and n != "none"]
    dtype = "float32" if smoke else "bfloat16"
    backends = a.backends.split(",")
    sweep = (a.mega_configs or ("16x128x4x1" if smoke else "16x256x4x1,32x256x4x1p,16x128x8x1p")).split(",")
    sweep = [c for c in sweep if c and c != "none"]
    datasheet = table.hbm_tbps * 1e12 if table else float("nan")
    hw = Hardware.of(table, bandwidth=bw) if table and table.sms else None  # the schedule model at the measured copy
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} (table row "
          f"{table.name if table else 'none'}), copy bandwidth {bw / 1e9:.0f} GB/s, read-only {read_bw / 1e9:.0f} "
          f"GB/s, prompt {P}, {warm} untimed + {steps} timed steps, {dtype}", flush=True)
    for name in models:
        t = time.perf_counter()
        llm = hd.LLM(name, device=str(device), dtype=dtype, seed=a.seed, backend="reference")
        print(f"{name}: built in {time.perf_counter() - t:.0f} s", flush=True)
        runner_for = runners_for(llm, device, sweep, a.max_spin, a.workers)
        # every backend at every batch first, then the long contexts, then the megakernel sweep at batch 1
        # torch.compile at the first batch size only: its compile (minutes on a GPU) is paid per shape
        short = [(B, b, 0) for B in batches for b in backends if b != "compile" or B == batches[0]]
        swept = [(1, f"mega[{c}]", 0) for c in sweep if "mega" in backends and 1 in batches]
        long_rows = [(1, b, n) for n in longs for b in ("graph", "mega") if b in backends]
        plan = long_rows if a.long_only else short + long_rows + swept
        refs = {}
        for B, backend, long in plan:
            g = torch.Generator().manual_seed(a.seed + B)
            prompts = torch.randint(0, llm.config.vocab_size, (B, P), generator=g).to(device)
            if not long and B not in refs:
                tokens, logits, seconds = decode(ReferenceRunner(llm.model), prompts, steps, warm)
                exact = None
                if any(b.startswith("mega") for b2, b, n in plan if b2 == B and not n):
                    exact = logits if dtype == "float32" else fp32_reference(llm, prompts, tokens, steps, warm)
                refs[B] = (tokens, logits, seconds, exact)
            t = time.perf_counter()
            context = (long or P) + warm + steps // 2
            row = dict(model=name, backend=backend, batch=B, dtype=dtype, context=context)
            try:
                row.update(measure(backend, runner_for, llm, prompts, None if long else refs[B], steps, warm,
                                   long, hw))
            except Exception as e:  # one backend failing must not lose the others' numbers
                row.update(error=f"{type(e).__name__}: {e}"[:300])
            s = row.pop("seconds", None)
            if s:
                step_bytes = bytes_per_step(llm.config, B, context, 2 if dtype == "bfloat16" else 4)
                row.update(ms_per_step=1e3 * s, tok_s=B / s, bytes_per_step=step_bytes, copy_gbs=bw / 1e9,
                           mbu=step_bytes / bw / s, mbu_datasheet=step_bytes / datasheet / s,
                           roofline_tok_s=B * bw / step_bytes, ceiling_tok_s=B * read_bw / step_bytes)
            row["wall_s"] = time.perf_counter() - t
            rows.add(row)
            print(format_row(row), flush=True)
        llm = runner_for = refs = None  # free the weights before the next model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\nwrote {rows.out}")


def format_row(r: dict) -> str:
    head = f"{r['model']:14} {r['backend']:22} B={r['batch']:<2} ctx={r['context']:<6}"
    if "error" in r and "tok_s" not in r:
        return f"{head} ERROR {r['error']}"
    check = "" if "greedy_agree" not in r else \
        (f"  greedy {r['greedy_agree']:.3f} (near-ties {r['near_ties']}) rel.err {r['max_rel_err']:.1e} "
         f"{'ok' if r['ok'] else 'FAIL'}")
    if "exact_rel_err" in r:
        check += f"  fp32 ref {r['exact_rel_err']:.1e} {'exact' if r['exact_ok'] else 'NOT EXACT'}"
    mega = "" if "predicted_tok_s" not in r else \
        (f"  kernel {r.get('kernel_ms', float('nan')):.3f} ms, model {r['predicted_tok_s']:.0f} tok/s "
         f"({100 * r['predicted_mbu']:.0f}%), regs {r.get('registers', '-')} spills {r.get('spill_bytes', '-')}")
    return (f"{head} {r['tok_s']:9.1f} tok/s {r['ms_per_step']:8.3f} ms {r['bytes_per_step'] / 1e9:6.3f} GB/step  "
            f"MBU {100 * r['mbu']:5.1f}% (datasheet {100 * r['mbu_datasheet']:5.1f}%)  roofline "
            f"{r['roofline_tok_s']:6.0f}, read ceiling {r['ceiling_tok_s']:6.0f} tok/s{check}{mega}")


if __name__ == "__main__":
    main()
