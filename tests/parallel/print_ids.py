"""Prints the greedy token ids of a prompt: `python print_ids.py MODEL [PLAN]`, under torchrun with a plan (rank 0
prints, the other ranks follow), or as one process without. Run by test_hetero.py."""
import sys

import hyperdecode as hd
from hyperdecode.parallel.follow import end_rank, follow


def run() -> int:
    model, plan = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    llm = hd.LLM(model, device="cpu", parallel=plan)
    if llm.rank != 0:
        follow(llm.runner)
        end_rank(0)
    print(llm.generate("hello world, this is a longer prompt", max_tokens=24, ignore_eos=True).token_ids)
    if plan:
        end_rank(0)
    return 0


if __name__ == "__main__":
    sys.exit(run())
