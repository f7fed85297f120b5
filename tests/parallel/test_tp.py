"""Plain tensor parallelism of both families over torch.distributed (gloo, W processes on the CPU): the logits of
a [B, S] forward and 16 greedy steps equal one process's, heads that do not divide W included, and each rank holds
only its slices (plus the replicated embedding, norms and LM head)."""
import time

import pytest
import torch

from hyperdecode.parallel.tp import split_heads, split_range
from tests.parallel.ranks import ROOT, checkout_env, expected_params, free_port, one_process, run_world


@pytest.mark.parametrize("name, heads", [("tiny-llama", None), ("tiny-qwen3", None), ("tiny-llama", (6, 3)),
                                         ("tiny-glm5", None), ("tiny-dsv32", None)])
def test_tensor_parallel_equals_one_process(name, heads):
    ref, ref_tokens, full = one_process(name, heads)
    total = sum(p.numel() for p in full.parameters())
    # replicated: embedding, LM head, norms; in the GLM-5 family also q_a, kv_a, the indexer and the router
    kept = ("norm", "q_a_proj", "kv_a_proj", "indexer", "mlp.gate.")
    replicated = sum(p.numel() for n, p in full.named_parameters() if "layers." not in n or any(k in n for k in kept))
    for world in (2, 3, 4):  # 6 heads / 3 kv heads: W = 2 and 4 copy kv heads per query head, W = 3 groups them
        for rank, logits, got_tokens, params in run_world(world)[("tp", name, heads)]:
            torch.testing.assert_close(torch.tensor(logits), ref, rtol=1e-5, atol=1e-5)
            assert got_tokens == ref_tokens, (world, rank)
            # its shard: the split layers' share (uneven splits: at most one head / column more) + the replicated
            assert params - replicated <= (total - replicated) / world * 1.5 + 1, (world, rank, params)
            if hasattr(full.cfg, "kv_lora_rank"):  # exactly: counted from the checkpoint's shapes
                assert params == expected_params(full.cfg, "tp", world, rank), (world, rank)


def test_head_split_plans():
    assert split_range(10, 4, 0) == (0, 3) and split_range(10, 4, 3) == (8, 10)
    assert split_heads(8, 4, 2) == [([0, 1, 2, 3], [0, 1]), ([4, 5, 6, 7], [2, 3])]  # grouped
    assert split_heads(6, 3, 2) == [([0, 1, 2], [0, 0, 1]), ([3, 4, 5], [1, 2, 2])]  # a kv slot per query head


def test_torchrun_generate_prints_what_one_process_prints(tmp_path):
    """`torchrun --nproc-per-node 2 -m hyperdecode generate ... --parallel tp` (gloo on the CPU) against one
    process: a preset greedily, and a saved checkpoint (read by slices) with seeded sampling."""
    import subprocess
    import sys
    from hyperdecode.model.loader import export_model
    ckpt = export_model("tiny-llama", tmp_path / "ckpt", seed=0, dtype=torch.float32)
    for model, extra in (("tiny-llama", ()), (str(ckpt), ("--temperature", "0.8", "--seed", "5"))):
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
        for url in (f"http://127.0.0.1:{port}/v1", f"{single.url}/v1"):  # three turns: the prefix cache reused
            client = openai.OpenAI(base_url=url, api_key="none", timeout=60)
            messages, turns = [], []
            for text in ("hi there", "and then?", "go on"):
                messages.append({"role": "user", "content": text})
                r = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=12,
                                                   temperature=0)
                messages.append({"role": "assistant", "content": r.choices[0].message.content})
                turns.append((r.choices[0].message.content, r.usage.completion_tokens,
                              r.usage.prompt_tokens_details.cached_tokens))
            answers.append(turns)
        assert answers[0] == answers[1] and all(turn[1] > 0 for turn in answers[0])
        assert answers[0][0][2] == 0 and answers[0][1][2] > 0 and answers[0][2][2] > answers[0][1][2]
    finally:
        single.stop()
        job.terminate()
        job.wait(timeout=30)


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_ctrl_c_shuts_every_rank_down(command):
    """Ctrl-C at the terminal (SIGINT to torchrun's whole process group) while `serve` idles or `generate` runs:
    every process ends within a bound, with no traceback of ours and no peer waited for."""
    import os
    import signal
    import subprocess
    import sys
    import httpx
    port = free_port()
    args = {"serve": ["serve", "--model", "tiny-llama", "--port", str(port)],
            "generate": ["generate", "hello", "--model", "tiny-glm5", "--max-tokens", "4000"]}[command]
    plan = {"serve": "tp", "generate": "hetero"}[command]
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                            str(free_port()), "-m", "hyperdecode", *args, "--device", "cpu", "--parallel", plan],
                           env=checkout_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while command == "serve":
            assert job.poll() is None and time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        if command == "generate":
            time.sleep(3)  # loading or generating: either way Ctrl-C must end it
        assert job.poll() is None
        start = time.monotonic()
        os.killpg(job.pid, signal.SIGINT)
        _, err = job.communicate(timeout=60)
        assert time.monotonic() - start < 45
        assert job.returncode != 0
        assert str(ROOT / "hyperdecode") not in err, err[-3000:]  # torchrun's own traceback may follow; ours not
        time.sleep(1)
        with pytest.raises(ProcessLookupError):  # nothing of the job is left
            os.killpg(job.pid, 0)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
