"""Plain tensor parallelism of both families over torch.distributed (gloo, W processes on the CPU): the logits of
a [B, S] forward and 16 greedy steps equal one process's, heads that do not divide W included, and each rank holds
only its slices (plus the replicated embedding, norms and LM head)."""
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hyperdecode.model.loader import build, expected_shapes, preset_config
from hyperdecode.model.weights import random_state_dict
from hyperdecode.parallel.tp import attach_all_reduce, local_config, shard_tensors, split_heads, split_range

CPU = torch.device("cpu")
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def checkout_env() -> dict:
    """The subprocesses import this checkout's package (not whichever one pip installed in editable mode)."""
    import os
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
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (2, 9), generator=g)
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (7, 3)]
    return tokens, prompts


def worker(rank, world, port, name, heads, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = config(name, heads)
        full = random_state_dict(expected_shapes(cfg, False), 3)  # the test's source; a checkpoint is sliced on read
        local = local_config(cfg, world, rank)
        model = build(local, shard_tensors(cfg, full.__getitem__, world, rank), "shard", CPU, torch.float32)
        attach_all_reduce(model)
        tokens, prompts = inputs(cfg)
        with torch.inference_mode():
            logits = model.logits(model(tokens, torch.arange(tokens.shape[1]).expand(2, -1), use_cache=False))
        tokens_out = greedy(model, prompts, 16)
        params = sum(p.numel() for p in model.parameters())
        out.put((rank, logits.tolist(), tokens_out, params))  # plain data: the process ends before it is read
    finally:
        dist.barrier()  # nobody tears the group down while a peer still uses it
        dist.destroy_process_group()


@pytest.mark.parametrize("name, heads, worlds", [("tiny-llama", None, (2, 3, 4)), ("tiny-qwen3", None, (2, 3)),
                                                 ("tiny-llama", (6, 3), (2, 4)), ("tiny-glm5", None, (2, 3)),
                                                 ("tiny-dsv32", None, (2, 4))])
def test_tensor_parallel_equals_one_process(name, heads, worlds):
    cfg = config(name, heads)
    full = build(cfg, random_state_dict(expected_shapes(cfg, False), 3), "full", CPU, torch.float32)
    tokens, prompts = inputs(cfg)
    with torch.inference_mode():
        ref = full.logits(full(tokens, torch.arange(tokens.shape[1]).expand(2, -1), use_cache=False))
    ref_tokens = greedy(full, prompts, 16)
    total = sum(p.numel() for p in full.parameters())
    # replicated: embedding, LM head, norms; in the GLM-5 family also q_a, kv_a, the indexer and the router
    kept = ("norm", "q_a_proj", "kv_a_proj", "indexer", "mlp.gate.")
    replicated = sum(p.numel() for n, p in full.named_parameters() if "layers." not in n or any(k in n for k in kept))
    ctx = mp.get_context("spawn")
    for world in worlds:
        out = ctx.Queue()
        job = mp.start_processes(worker, args=(world, free_port(), name, heads, out), nprocs=world, join=False,
                                 start_method="spawn")
        results = sorted(out.get(timeout=120) for _ in range(world))  # read before joining: the queue must drain
        deadline = time.monotonic() + 120  # bounded: a hung rank fails the test instead of hanging it
        while not job.join(timeout=5):  # True once every rank has ended (join returns as each one ends)
            if time.monotonic() > deadline:
                for p in job.processes:
                    p.kill()
                pytest.fail(f"world {world}: a rank did not finish")
        for rank, logits, got_tokens, params in results:
            torch.testing.assert_close(torch.tensor(logits), ref, rtol=1e-5, atol=1e-5)
            assert got_tokens == ref_tokens, (world, rank)
            # its shard: the split layers' share (uneven splits: at most one head / column more) + the replicated
            split = total - replicated
            assert params - replicated <= split / world * 1.5 + 1, (world, rank, params)


def test_head_split_plans():
    assert split_range(10, 4, 0) == (0, 3) and split_range(10, 4, 3) == (8, 10)
    assert split_heads(8, 4, 2) == [([0, 1, 2, 3], [0, 1]), ([4, 5, 6, 7], [2, 3])]  # grouped
    assert split_heads(6, 3, 2) == [([0, 1, 2], [0, 0, 1]), ([3, 4, 5], [1, 2, 2])]  # a kv slot per query head


def test_torchrun_generate_prints_what_one_process_prints(tmp_path):
    """`torchrun --nproc-per-node 2 -m hyperdecode generate ... --parallel tp` (gloo on the CPU), greedy and seeded
    sampling, against one process; a saved checkpoint is read by slices."""
    import subprocess
    import sys
    from hyperdecode.model.loader import export_model
    ckpt = export_model("tiny-llama", tmp_path / "ckpt", seed=0, dtype=torch.float32)
    for model in ("tiny-llama", str(ckpt)):
        for extra in ((), ("--temperature", "0.8", "--seed", "5")):
            args = ["generate", "hello world", "--model", model, "--device", "cpu", "--max-tokens", "12", *extra]
            one = subprocess.run([sys.executable, "-m", "hyperdecode", *args], capture_output=True, text=True,
                                 timeout=120, env=checkout_env())
            ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                    "--master-port", str(free_port()), "-m", "hyperdecode", *args, "--parallel", "tp"],
                                   capture_output=True, text=True, timeout=180, env=checkout_env())
            assert one.returncode == 0 and ranks.returncode == 0, (one.stderr[-1500:], ranks.stderr[-2500:])
            assert ranks.stdout == one.stdout and one.stdout.strip()


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_ends_the_job_with_an_error_within_a_bound(mode):
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).with_name("fault_rank.py")
    args = ["generate", "hello", "--model", "tiny-llama", "--device", "cpu", "--max-tokens", "8", "--parallel", "tp"]
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()), str(script), mode, "1", *args], capture_output=True, text=True,
                          timeout=150, env=checkout_env())
    assert done.returncode != 0
    assert time.monotonic() - start < 120
    if mode == "raise":
        assert "hyperdecode: error: rank 1: RuntimeError: a fault planted" in done.stderr
    else:
        assert "Signals.SIGKILL" in done.stderr or "exitcode" in done.stderr


def test_serve_under_torchrun_answers_the_openai_client():
    """Rank 0 serves, rank 1 follows its steps; the answer equals a one-process server's at temperature 0."""
    import subprocess
    import sys
    import httpx
    import openai
    import hyperdecode as hd
    from tests.serve.conftest import LiveServer
    port = free_port()
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                            str(free_port()), "-m", "hyperdecode", "serve", "--model", "tiny-llama", "--device", "cpu",
                            "--port", str(port), "--parallel", "tp", "--max-batch", "2", "--max-model-len", "256"],
                           env=checkout_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    single = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0), max_batch=2, max_model_len=256)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert job.poll() is None, job.communicate()[1][-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the torchrun server did not come up"
            time.sleep(0.5)
        answers = []
        for url in (f"http://127.0.0.1:{port}/v1", f"{single.url}/v1"):
            client = openai.OpenAI(base_url=url, api_key="none", timeout=60)
            r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi there"}],
                                               max_tokens=12, temperature=0)
            answers.append((r.choices[0].message.content, r.usage.completion_tokens))
        assert answers[0] == answers[1] and answers[0][1] > 0
    finally:
        single.stop()
        job.terminate()
        job.wait(timeout=30)
