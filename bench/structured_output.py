"""What a grammar costs per token: SmolLM2-135M on the CPU, batch 1, sampling at temperature 1, free vs held to a
JSON schema (llguidance's mask before each token), alternated, best of N; also the mask's own time per token.

    python bench/structured_output.py [--runs 3] [--tokens 64]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import hyperdecode as hd

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "bio": {"type": "string"},
                                           "age": {"type": "integer"}}, "required": ["name", "bio", "age"]}
PROMPT = "Describe a person as JSON with a name, a long bio and an age:"


def decode_rate(llm: hd.LLM, tokens: int, structured: dict | None, seed: int) -> tuple[float, int]:
    """Output tokens per second after the first (decode only), and the tokens made."""
    r = llm.generate_batch([PROMPT], max_tokens=tokens, temperature=1.0, seed=seed, ignore_eos=True,
                           structured=structured)[0]
    return r.stats.tokens_per_s, r.stats.output_tokens


def mask_time(llm: hd.LLM, tokens: int) -> float:
    """Seconds per token of mask, sample and accept over random logits (no model): an upper bound on the matcher."""
    constraint = llm.inputs.grammars.constraint({"json_schema": SCHEMA})
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    made = 0
    while made < tokens and not constraint.done:
        masked = constraint.mask(torch.randn(1, llm.config.vocab_size, generator=g))
        token = int(torch.multinomial(torch.softmax(masked, -1)[0], 1, generator=g))
        if token in llm.config.eos_token_ids:
            break
        constraint.accept(token)
        made += 1
    return (time.perf_counter() - start) / max(made, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    llm = hd.LLM("smollm2", device="cpu")
    llm.inputs.grammars.table()  # the token table once (~0.2 s), not inside a timed run
    decode_rate(llm, 8, None, 0)  # warm-up
    free, held = [], []
    for run in range(args.runs):
        free.append(decode_rate(llm, args.tokens, None, run)[0])
        held.append(decode_rate(llm, args.tokens, {"json_schema": SCHEMA}, run)[0])
    per_mask = mask_time(llm, args.tokens)
    best_free, best_held = max(free), max(held)
    print(json.dumps({"free_tok_s": round(best_free, 2), "json_schema_tok_s": round(best_held, 2),
                      "ratio": round(best_held / best_free, 3), "mask_loop_ms_per_token": round(per_mask * 1e3, 3),
                      "runs": args.runs, "tokens": args.tokens}))


if __name__ == "__main__":
    main()
