"""The heterogeneous plan (rank 0 runs the DSA indexer and sends the top-k positions; ranks 1..W-1 attend with the
heads split among them; the MoE over all W): with W = 2, 3 and 4 gloo processes its logits and 16 greedy steps
equal one process's at contexts longer than index_topk, and each rank holds exactly its share."""
import pytest
import torch

from hyperdecode.errors import ConfigError
from hyperdecode.parallel.hetero import hetero_config, hetero_heads
from tests.parallel.ranks import checkout_env, config, expected_params, free_port, one_process, run_world


@pytest.mark.parametrize("name", ["tiny-glm5", "tiny-dsv32"])
def test_hetero_equals_one_process(name, capsys):
    ref, ref_tokens, full = one_process(name)
    total = sum(p.numel() for p in full.parameters())
    for world in (2, 3, 4):  # 4 heads over 1, 2 and 3 attention ranks: 4 | 2, 2 | 2, 1, 1
        counts = []
        for rank, logits, got_tokens, params in run_world(world)[("hetero", name, None)]:
            torch.testing.assert_close(torch.tensor(logits), ref, rtol=1e-5, atol=1e-5)
            assert got_tokens == ref_tokens, (world, rank)
            assert params == expected_params(full.cfg, "hetero", world, rank), (world, rank)
            counts.append(params)
        with capsys.disabled():
            print(f"\n{name} hetero W={world}: parameters per rank {counts} of {total} "
                  f"(1/W = {total // world}; the rest replicated: embedding, LM head, norms, q_a, router)")


def test_head_plan_and_refusals():
    assert hetero_heads(4, 2) == [[], [0, 1, 2, 3]]
    assert hetero_heads(5, 4) == [[], [0, 1], [2, 3], [4]]
    cfg = config("tiny-glm5")
    assert hetero_config(cfg, 3, 2).num_attention_heads == 2
    assert hetero_config(cfg, 3, 1).moe_intermediate_size == cfg.moe_intermediate_size // 3 + 1  # 128 = 43 + 43 + 42
    with pytest.raises(ConfigError, match="parallel='hetero'.*DSA indexer.*parallel='tp'"):
        hetero_config(config("tiny-llama"), 2, 1)
    with pytest.raises(ConfigError, match="at least one attention rank"):
        hetero_config(cfg, 1, 0)


def test_fp8_checkpoint_under_torchrun_both_plans(tmp_path):
    """A block-FP8 checkpoint (the official format) read by slices on every rank — a rank dequantizes only the
    128 x 128 blocks that cover its rows — gives one process's greedy tokens under hetero (3 ranks) and tp (2)."""
    import subprocess
    import sys
    from pathlib import Path
    from safetensors import safe_open
    from hyperdecode.model.loader import export_model
    ckpt = export_model("tiny-glm5", tmp_path / "fp8", fp8=True, seed=0, dtype=torch.float32)
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert any(f.get_slice(k).get_dtype() == "F8_E4M3" for k in f.keys())
    script = str(Path(__file__).with_name("print_ids.py"))
    one = subprocess.run([sys.executable, script, str(ckpt)], capture_output=True, text=True, timeout=120,
                         env=checkout_env())
    assert one.returncode == 0 and one.stdout.startswith("["), one.stderr[-2000:]
    for plan, world in (("hetero", 3), ("tp", 2)):
        ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                                "--master-port", str(free_port()), script, str(ckpt), plan], capture_output=True,
                               text=True, timeout=180, env=checkout_env())
        assert ranks.returncode == 0, ranks.stderr[-2500:]
        assert ranks.stdout == one.stdout, plan
