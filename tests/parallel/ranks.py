"""Shared by the parallel tests: W gloo processes on the CPU run one plan on a preset's random weights and report
their logits, greedy tokens and parameter counts; `one_process` is the oracle they are compared with."""
import functools
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hyperdecode.model.loader import build, expected_shapes, preset_config
from hyperdecode.model.registry import family_of
from hyperdecode.model.weights import random_state_dict
from hyperdecode.parallel.launch import build_rank
from hyperdecode.parallel.tp import split_range

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]


def checkout_env() -> dict:
    """The subprocesses import this checkout's package (not whichever one pip installed in editable mode)."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(name, heads=None):
    cfg = preset_config(name)
    cfg.num_nextn_predict_layers = 0  # the MTP layer is not split here
    if heads is not None:  # uneven: heads, kv heads that W does not divide
        cfg.num_attention_heads, cfg.num_key_value_heads = heads
    return cfg


def greedy(model, prompts, steps):
    from hyperdecode.engine.core import EngineCore
    from hyperdecode.engine.runner import ReferenceRunner
    from hyperdecode.engine.sampling import SamplingParams
    from hyperdecode.engine.sequence import Sequence
    core = EngineCore(ReferenceRunner(model))
    core.reserve(len(prompts), 96)
    seqs = [Sequence(p, SamplingParams(max_tokens=steps, ignore_eos=True)) for p in prompts]
    for s in seqs:
        core.add(s)
    while core.has_unfinished:
        core.step()
    return [s.output_ids for s in seqs]


def inputs(cfg):
    """A [2, 24] forward and two prompts (20 and 5 tokens, then 16 decode steps): longer than the presets'
    index_topk (16), so the DSA selection is sparse in the forward, in the prefill and in decoding."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (20, 5)]
    return tokens, prompts


def run(model, cfg):
    tokens, prompts = inputs(cfg)
    with torch.inference_mode():
        logits = model.logits(model(tokens, torch.arange(tokens.shape[1]).expand(2, -1), use_cache=False))
    return logits, greedy(model, prompts, 16)


def one_process(name, heads=None):
    """(logits, greedy tokens, model) of the whole model in this process."""
    cfg = config(name, heads)
    full = build(cfg, random_state_dict(expected_shapes(cfg, False), 3), "full", CPU, torch.float32)
    logits, tokens = run(full, cfg)
    return logits, tokens, full


# every plan and model the equality tests cover: one world of W processes runs them all (a spawn costs more than
# a tiny model's forward)
JOBS = (("tp", "tiny-llama", None), ("tp", "tiny-qwen3", None), ("tp", "tiny-llama", (6, 3)), ("tp", "tiny-glm5", None),
        ("tp", "tiny-dsv32", None), ("hetero", "tiny-glm5", None), ("hetero", "tiny-dsv32", None))


def worker(rank, world, port, jobs, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for plan, name, heads in jobs:
            cfg = config(name, heads)
            full = random_state_dict(expected_shapes(cfg, False), 3)  # the source; a checkpoint is sliced on read
            model = build_rank(cfg, full.__getitem__, plan, world, rank, CPU, torch.float32, "shard")
            logits, tokens = run(model, cfg)
            params = sum(p.numel() for p in model.parameters())
            out.put(((plan, name, heads), rank, logits.tolist(), tokens, params))  # plain data
    finally:
        dist.barrier()  # nobody tears the group down while a peer still uses it
        dist.destroy_process_group()


@functools.lru_cache(maxsize=None)
def run_world(world):
    """{job: every rank's (rank, logits, greedy tokens, parameter count), in rank order} for every job in JOBS,
    from one world of W gloo processes; bounded."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    job = mp.start_processes(worker, args=(world, free_port(), JOBS, out), nprocs=world, join=False,
                             start_method="spawn")
    results = {}
    for _ in range(world * len(JOBS)):  # read before joining: the queue must drain
        key, *row = out.get(timeout=180)
        results.setdefault(key, []).append(tuple(row))
    deadline = time.monotonic() + 120  # bounded: a hung rank fails the test instead of hanging it
    while not job.join(timeout=5):  # True once every rank has ended (join returns as each one ends)
        if time.monotonic() > deadline:
            for p in job.processes:
                p.kill()
            pytest.fail(f"world {world}: a rank did not finish")
    return {key: sorted(rows) for key, rows in results.items()}


def expected_params(cfg, plan, world, rank):
    """What rank `rank` should hold, counted from the checkpoint's shapes (GLM-5 family): its heads' rows of q_b and
    kv_b and columns of o_proj, its 1/W of every MLP's and expert's columns, and every replicated tensor (embedding,
    LM head, norms, q_a, kv_a, indexer, router); under hetero, the indexer only on rank 0 and no attention there
    besides q_a."""
    h = cfg.num_attention_heads
    if plan == "tp":
        heads = range(*split_range(h, world, rank))
    else:
        heads = range(0) if rank == 0 else range(*split_range(h, world - 1, rank - 1))
    total = cfg.hidden_size * cfg.vocab_size if cfg.tie_word_embeddings else 0  # the LM head's copy
    for name, shape in family_of(cfg).shapes(cfg, False).items():
        leaf = name.split(".")[-2]
        if plan == "hetero" and "self_attn." in name:
            everywhere = leaf in ("q_a_proj", "q_a_layernorm")
            if not everywhere and (".indexer." in name) != (rank == 0):
                continue
        numel = math.prod(shape)
        if leaf in ("q_b_proj", "kv_b_proj", "o_proj") and name.endswith("weight"):
            numel = numel * len(heads) // h
        elif leaf == "o_proj":  # its bias: with head 0
            numel *= 0 in heads
        elif leaf in ("gate_proj", "up_proj"):
            numel = numel // shape[0] * len(range(*split_range(shape[0], world, rank)))
        elif leaf == "down_proj":
            numel = numel // shape[1] * len(range(*split_range(shape[1], world, rank)))
        total += numel
    return total
