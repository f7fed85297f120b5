"""Bad input: each error names the file, field or tensor at fault."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import hyperdecode as hd


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unknown_preset_lists_presets():
    with pytest.raises(hd.ModelNotFoundError, match=r"'no-such-model'.*smollm2, tiny-llama"):
        hd.LLM("no-such-model", device="cpu")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(hd.HyperdecodeError, match="missing.gguf"):
        hd.LLM(str(tmp_path / "missing.gguf"), device="cpu")


def test_corrupt_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + torch.randint(0, 255, (300,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(hd.WeightsError, match="bad.gguf"):
        hd.LLM(str(bad), device="cpu")


def test_corrupt_config(hf_checkpoint, tmp_path):
    d = copy_checkpoint(hf_checkpoint()[0], tmp_path / "ckpt")
    (d / "config.json").write_text('{"hidden_size": 96,')
    with pytest.raises(hd.ConfigError, match=r"config\.json.*not valid JSON"):
        hd.LLM(str(d), device="cpu")


def test_config_missing_field(hf_checkpoint, tmp_path):
    d = copy_checkpoint(hf_checkpoint()[0], tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["num_attention_heads"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hd.ConfigError, match="'num_attention_heads' is missing"):
        hd.LLM(str(d), device="cpu")


def test_config_inconsistent_heads(hf_checkpoint, tmp_path):
    d = copy_checkpoint(hf_checkpoint()[0], tmp_path / "ckpt")
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_key_value_heads"] = 4
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hd.ConfigError, match="num_key_value_heads"):
        hd.LLM(str(d), device="cpu")


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.__setitem__("model.layers.1.mlp.up_proj.weight", torch.randn(160, 95)),
     r"'model.layers.1.mlp.up_proj.weight' has shape \[160, 95\], expected \[160, 96\]"),
    (lambda sd: sd.pop("model.layers.2.self_attn.k_proj.weight"),
     r"missing tensor 'model.layers.2.self_attn.k_proj.weight' \(expected shape \[32, 96\]\)"),
    (lambda sd: sd.__setitem__("model.layers.9.mlp.up_proj.weight", torch.randn(3)),
     r"unexpected tensor 'model.layers.9.mlp.up_proj.weight'"),
], ids=["wrong-shape", "missing", "extra"])
def test_bad_tensors_are_named(hf_checkpoint, tmp_path, edit, message):
    d = copy_checkpoint(hf_checkpoint()[0], tmp_path / "ckpt")
    sd = load_file(d / "model.safetensors")
    edit(sd)
    save_file(sd, d / "model.safetensors")
    with pytest.raises(hd.WeightsError, match=message):
        hd.LLM(str(d), device="cpu")


def test_missing_shard(hf_checkpoint, tmp_path):
    d = copy_checkpoint(hf_checkpoint(sharded=True)[0], tmp_path / "ckpt")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(hd.WeightsError, match=shard.name):
        hd.LLM(str(d), device="cpu")


def test_prompt_longer_than_context():
    llm = hd.LLM("tiny-llama", device="cpu")
    with pytest.raises(ValueError, match="maximum context length is 1024 tokens"):
        llm.generate([5] * 1024)


@pytest.mark.parametrize("kw", [dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2)])
def test_bad_sampling_parameters(kw):
    llm = hd.LLM("tiny-llama", device="cpu")
    with pytest.raises(ValueError, match=f"'{next(iter(kw))}'"):
        llm.generate("x", **kw)


def test_bad_device_and_dtype():
    with pytest.raises(hd.ConfigError, match="dtype 'int7'"):
        hd.LLM("tiny-llama", device="cpu", dtype="int7")
    with pytest.raises(hd.ConfigError, match="backend 'warp'"):
        hd.LLM("tiny-llama", device="cpu", backend="warp")
