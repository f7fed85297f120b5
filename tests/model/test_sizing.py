"""Sizing figures against the published checkpoints' counts (model-family.md) and the CLI around them."""
import subprocess
import sys

import pytest

import hyperdecode as hd
from hyperdecode.model.loader import preset_config
from hyperdecode.model.sizing import size_model


def test_glm5_counts_match_the_checkpoint():
    s = size_model(preset_config("glm-5"))
    assert s.total_params == 753_864_139_008
    assert s.main_params == 743_911_218_432
    assert round(s.active_params / 1e9, 1) == 40.8
    assert s.kv_bytes_per_token == 89_856
    assert size_model(preset_config("glm-5"), kv_bytes=1).kv_bytes_per_token == 51_168


def test_deepseek_v32_and_medium_counts():
    ds = size_model(preset_config("deepseek-v3.2"))
    assert round(ds.main_params / 1e9, 1) == 671.9 and round(ds.total_params / 1e9) == 685
    assert ds.kv_bytes_per_token == 70_272
    medium = size_model(preset_config("medium-glm5"))
    assert round(medium.main_params / 1e9, 3) == 2.521 and round(medium.active_params / 1e9, 2) == 0.80


@pytest.mark.parametrize("context", [1000, 2048, 100_000])
def test_bytes_and_roofline(context):
    cfg = preset_config("medium-glm5")
    s = size_model(cfg, context=context, hbm_tbps=4.0)
    attended = min(context, cfg.index_topk)
    assert s.cache_bytes_per_token == 16 * attended * 1152 + 16 * context * 132
    assert s.weight_bytes_per_token == 2 * s.active_params
    assert s.roofline_tok_s == pytest.approx(4e12 / (s.weight_bytes_per_token + s.cache_bytes_per_token))


def test_tiny_preset_built_model_matches_its_count():
    llm = hd.LLM("tiny-glm5", device="cpu")
    stored = sum(p.numel() for n, p in llm.model.named_parameters())
    assert stored == size_model(llm.config).total_params


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hyperdecode.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_inspect_cli():
    r = cli("inspect", "glm-5", "--context", "8192")
    assert r.returncode == 0, r.stderr
    assert "753,864,139,008" in r.stdout and "tok/s" in r.stdout
    bad = cli("inspect", "glm-5", "--context", "0")
    assert bad.returncode == 1 and "--context" in bad.stderr and "Traceback" not in bad.stderr


def test_export_cli_writes_a_loadable_fp8_checkpoint(tmp_path):
    r = cli("export", "tiny-dsv32", str(tmp_path / "ckpt"), "--fp8", "--seed", "3")
    assert r.returncode == 0, r.stderr
    llm = hd.LLM(str(tmp_path / "ckpt"), device="cpu")
    assert llm.config.model_type == "deepseek_v32" and llm.fp8_weights and llm.model.mtp is not None
    assert len(llm.generate([5, 6, 7], max_tokens=4, ignore_eos=True).token_ids) == 4
