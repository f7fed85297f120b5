"""Speculative decoding: what drafts buy, measured in one run against plain decoding.

CPU (default): SmolLM2-135M, batch 1, greedy, the reference backend. Plain decoding, `ngram:4` and `suffix:8`,
alternated, best of --reps, on a code-editing prompt (the answer repeats most of the prompt) and a plain-prose
prompt. Prints decode tok/s (1 / TPOT), the speed-up over plain, mean accepted length and acceptance per position,
and checks that every speculative run's tokens equal the plain run's.

GPU (--gpu, on a device): the cost of one verify step of 1 + k tokens against one decode step (batch 1, the `mega`
backend's programs, CUDA-event timed, median of --reps) on llama-3.2-1b and medium-glm5 shapes with random weights
(bf16), next to the schedule model's prediction for both programs; then MTP on medium-glm5: random weights accept
nothing, so the MTP layer is first distilled on the GPU (--distill-steps Adam steps teaching it the main model's
greedy token two ahead, on random prompts) and then used for `mtp:3` generation, tok/s and acceptance against
plain decoding (measured on a prompt the layer was distilled on: a random model's continuations are not
predictable from outside its training data, so this measures the speed at a real acceptance rate, not how well
MTP generalises). `--smoke` runs the GPU path on the CPU with tiny models (the interpreter) to check the script.

    python bench/spec_decode.py [--tokens 160] [--reps 3]
    PYTHONPATH=. python3 bench/spec_decode.py --gpu --out $OUT      # on the H200
    python bench/spec_decode.py --gpu --smoke                      # the GPU path, tiny, on the CPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import hyperdecode as hd

CODE_PROMPT = '''Rename the variable `items` to `records` in this function and return the whole function.

def summarize(items, limit=10):
    """Counts the items by kind and returns the most common kinds."""
    counts = {}
    for item in items:
        kind = item.get("kind", "unknown")
        counts[kind] = counts.get(kind, 0) + 1
    ranked = sorted(counts.items(), key=lambda pair: pair[1], reverse=True)
    return ranked[:limit]
'''
PROSE_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
METHODS = (None, "ngram:4", "suffix:8")


def cpu(args: argparse.Namespace) -> list[dict]:
    llm = hd.LLM("smollm2", device="cpu")
    rows = []
    for label, text in (("code edit", CODE_PROMPT), ("prose", PROSE_PROMPT)):
        prompt = llm.chat_prompt([{"role": "user", "content": text}])
        best: dict = {}
        tokens: dict = {}
        llm.generate(prompt, max_tokens=8)  # warm-up
        for _ in range(args.reps):
            for spec in METHODS:  # alternated, so drift hits every method alike
                g = llm.generate(prompt, max_tokens=args.tokens, speculative=spec)
                tokens[spec] = g.token_ids
                if spec not in best or g.stats.tokens_per_s > best[spec].stats.tokens_per_s:
                    best[spec] = g
        plain = best[None].stats.tokens_per_s
        for spec in METHODS:
            g = best[spec]
            s = g.stats.speculative
            rows.append(dict(prompt=label, method=spec or "none", output_tokens=len(g.token_ids),
                             tok_s=round(g.stats.tokens_per_s, 1), speedup=round(g.stats.tokens_per_s / plain, 2),
                             mean_accepted_length=round(s.mean_accepted_length, 2) if s else 1.0,
                             acceptance_per_pos=s.as_dict()["acceptance_per_pos"] if s else [],
                             same_tokens=tokens[spec] == tokens[None]))
    print(f"{'prompt':10} {'method':9} {'tokens':>6} {'tok/s':>7} {'x plain':>7} {'mean acc':>8}  "
          "acceptance by position")
    for r in rows:
        print(f"{r['prompt']:10} {r['method']:9} {r['output_tokens']:6d} {r['tok_s']:7.1f} {r['speedup']:7.2f} "
              f"{r['mean_accepted_length']:8.2f}  {r['acceptance_per_pos']}  same tokens: {r['same_tokens']}")
    assert all(r["same_tokens"] for r in rows), "a speculative run's greedy tokens differ from plain decoding"
    return rows


# --- GPU --------------------------------------------------------------------------------------------------------

def median_ms(fn, reps: int) -> float:
    """Median CUDA-event time of fn() (CPU: wall time)."""
    times = []
    for _ in range(reps + 2):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[2:])


def verify_cost(name: str, k: int, context: int, reps: int, dtype: str) -> dict:
    """One decode step (1 token) vs one verify step (1 + k tokens) at batch 1, both in the megakernel."""
    from hyperdecode.engine.mega.runner import MegaRunner
    from hyperdecode.engine.mega.schedule import predict
    llm = hd.LLM(name, device="auto", dtype=dtype, seed=0)
    runner = MegaRunner(llm.model)
    runner.setup(1, context + k + 2)
    runner.verify_width = 1 + k
    device = llm.device
    tok1 = torch.randint(0, llm.config.vocab_size, (1, 1), device=device)
    tokk = torch.randint(0, llm.config.vocab_size, (1, 1 + k), device=device)
    pos1 = torch.full((1, 1), context, device=device)
    posk = torch.arange(context, context + 1 + k, device=device)[None]

    def one():
        runner.forward(tok1, pos1, None, torch.ones(1, 1, dtype=torch.bool, device=device))
        runner.confirm()

    def many():
        runner.forward(tokk, posk, None, torch.ones(1, 1 + k, dtype=torch.bool, device=device))
        runner.confirm()
    one_ms, many_ms = median_ms(one, reps), median_ms(many, reps)
    prog_k = runner.verify_program(1 + k)[0]
    predicted = {}
    if device.type == "cuda":
        predicted = dict(predicted_one_us=round(predict(runner.prog, context=context).total_us, 1),
                         predicted_many_us=round(predict(prog_k, context=context).total_us, 1))
    return dict(model=name, k=k, context=context, one_ms=round(one_ms, 4), verify_ms=round(many_ms, 4),
                ratio=round(many_ms / one_ms, 3), **predicted)


def distill_mtp(llm: hd.LLM, steps: int, seq_len: int, batch: int, lr: float = 1e-3,
                seed: int = 0) -> tuple[list[float], list[list[int]]]:
    """Teaches the MTP layer the main model's greedy token two positions ahead (the main model frozen): random
    prompts continued greedily by the main model are the data. Returns the loss every tenth step and the
    prompts."""
    m = llm.model
    g = torch.Generator().manual_seed(seed)
    vocab = llm.config.vocab_size
    params = [p for p in m.mtp.parameters()]
    for p in m.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    prompts = [torch.randint(0, vocab, (8,), generator=g).tolist() for _ in range(batch)]
    data = [gen.token_ids for gen in llm.generate_batch(prompts, max_tokens=seq_len, ignore_eos=True)]
    ids = torch.tensor([p + d for p, d in zip(prompts, data)], device=llm.device)
    pos = torch.arange(ids.shape[1], device=llm.device)[None].expand(ids.shape[0], -1)
    with torch.no_grad():
        hidden = m(ids, pos, use_cache=False)
    losses = []
    for step in range(steps):
        logits = m.mtp_logits(hidden[:, :-2], ids[:, 1:-1], pos[:, :-2])  # position p predicts token p + 2
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab).float(), ids[:, 2:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            losses.append(round(float(loss.detach()), 4))
    for p in params:
        p.requires_grad_(False)
    return losses, prompts


def mtp_speed(name: str, backend: str, dtype: str, steps: int, tokens: int, reps: int) -> dict:
    llm = hd.LLM(name, device="auto", dtype=dtype, seed=0, backend=backend)
    t = time.perf_counter()
    losses, prompts = distill_mtp(llm, steps, seq_len=tokens, batch=16)
    distill_s = time.perf_counter() - t
    prompt = prompts[0]  # in distribution: the MTP layer learnt this continuation (a random model is not predictable)
    best: dict = {}
    for _ in range(reps):
        for spec in (None, "mtp:3"):
            g = llm.generate(prompt, max_tokens=tokens, ignore_eos=True, speculative=spec)
            if spec not in best or g.stats.tokens_per_s > best[spec].stats.tokens_per_s:
                best[spec] = g
    s = best["mtp:3"].stats.speculative
    return dict(model=name, backend=backend, distill_steps=steps, distill_s=round(distill_s, 1), losses=losses,
                plain_tok_s=round(best[None].stats.tokens_per_s, 1),
                mtp_tok_s=round(best["mtp:3"].stats.tokens_per_s, 1),
                speedup=round(best["mtp:3"].stats.tokens_per_s / best[None].stats.tokens_per_s, 2),
                mean_accepted_length=round(s.mean_accepted_length, 2),
                acceptance_per_pos=s.as_dict()["acceptance_per_pos"],
                same_tokens=best["mtp:3"].token_ids == best[None].token_ids)


def gpu(args: argparse.Namespace) -> list[dict]:
    if args.smoke:  # tiny models in the interpreter; MTP on the reference backend
        shapes, dtype, context, mtp_model, backend = ["tiny-llama", "tiny-glm5"], "float32", 24, "tiny-glm5", \
            "reference"
    else:
        shapes, dtype, context, mtp_model, backend = ["llama-3.2-1b", "medium-glm5"], "bfloat16", 1024, \
            "medium-glm5", "mega"
    rows = []
    for name in shapes:
        for k in ((3,) if args.smoke else (1, 3)):
            rows.append(verify_cost(name, k, context, args.reps, dtype))
            print(json.dumps(rows[-1]), flush=True)
    rows.append(mtp_speed(mtp_model, backend, dtype, args.distill_steps, 32 if args.smoke else args.tokens,
                          1 if args.smoke else args.reps))
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=160)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--distill-steps", type=int, default=300)
    p.add_argument("--out", default=None, help="also write the rows as JSON into this directory")
    args = p.parse_args()
    if args.smoke:
        args.reps, args.distill_steps = 1, 30
    rows = gpu(args) if args.gpu else cpu(args)
    if args.out:
        with open(f"{args.out}/spec_decode.json", "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
