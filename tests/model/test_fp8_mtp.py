"""FP8 block format, FP8 checkpoints, the MTP layer, and bad GLM-family checkpoints."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import hyperdecode as hd
from hyperdecode.model.checkpoint import FP8, dequantize_fp8, quantize_fp8, write_checkpoint
from hyperdecode.model.loader import build, expected_shapes, export_model, preset_config
from hyperdecode.model.weights import random_state_dict
from tests.conftest import rel_err

U_FP8, U_BF16 = 2.0 ** -4, 2.0 ** -8  # unit roundoff (half an ulp, relative) of e4m3 and bfloat16


def test_fp8_block_roundtrip_follows_the_formula():
    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(0)) * 0.05
    q, scale_inv = quantize_fp8(w)
    assert q.dtype == FP8 and scale_inv.dtype == torch.float32 and scale_inv.shape == (3, 2)
    expected = torch.empty(300, 200)
    for i in range(300):
        for j0, j1 in ((0, 128), (128, 200)):
            expected[i, j0:j1] = q[i, j0:j1].float() * scale_inv[i // 128, j0 // 128]
    assert torch.equal(dequantize_fp8(q, scale_inv), expected)
    # every element within half an ulp of e4m3 in its block's scale (normal: 2^-4 relative; subnormal: 2^-10)
    s = scale_inv.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    err = (expected - w).abs() / s
    assert (err <= torch.maximum(U_FP8 * (w / s).abs(), torch.full_like(w, 2.0 ** -10)) + 1e-6).all()
    assert ((w / s).abs().amax(0).amax() - 448).abs() < 1e-3  # each block's largest value maps to e4m3's max


@pytest.fixture(scope="module")
def fp8_glm(tmp_path_factory):
    d = tmp_path_factory.mktemp("glm-fp8")
    export_model("tiny-glm5", d, fp8=True, seed=4)
    return d


def test_fp8_checkpoint_loads_dequantized_and_keeps_raw(fp8_glm):
    raw = load_file(fp8_glm / "model.safetensors")
    name = "model.layers.1.self_attn.kv_b_proj.weight"
    assert raw[name].dtype == FP8 and raw[name + "_scale_inv"].shape == (math.ceil(512 / 128), 1)
    assert raw["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert raw["model.layers.1.mlp.gate.weight"].dtype == torch.float32
    llm = hd.LLM(str(fp8_glm), device="cpu")
    assert llm.config.fp8_block == (128, 128)
    q, s = llm.fp8_weights["layers.1.self_attn.kv_b_proj.weight"]
    assert q.dtype == FP8 and torch.equal(q.view(torch.uint8), raw[name].view(torch.uint8))
    # the module stores projections [in, out] (model/layers.py): the dequantized [out, in] weight, transposed
    assert torch.equal(llm.model.layers[1].self_attn.kv_b_proj.weight.T, dequantize_fp8(q, s))
    assert llm.model.mtp is not None


def test_fp8_logits_within_quantization_error(tmp_path):
    """Dense MLPs and contexts within index_topk, so no routing or top-k decision can flip: the logit error is
    then continuous in the weight error. Bound: the FP8 model's relative logit error is at most 1.5x the
    error-per-unit-roundoff the bf16-weight model shows, times e4m3's unit roundoff 2^-4."""
    cfg = preset_config("tiny-glm5")
    cfg.mlp_layer_types = ["dense"] * cfg.num_hidden_layers
    sd = random_state_dict(expected_shapes(cfg, False), 5)
    write_checkpoint(sd, cfg.to_hf_dict(), tmp_path, fp8=True, dtype=torch.float32)
    cpu = torch.device("cpu")
    exact = build(cfg, sd, "fp32", cpu, torch.float32)
    bf16_weights = build(cfg, {k: v.bfloat16().float() for k, v in sd.items()}, "bf16", cpu, torch.float32)
    fp8 = hd.LLM(str(tmp_path), device="cpu").model
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(6))
    pos = torch.arange(16)[None]
    with torch.inference_mode():
        ref, b16, f8 = (m.logits(m(ids, pos, use_cache=False)) for m in (exact, bf16_weights, fp8))
    amplification = rel_err(b16, ref) / U_BF16
    assert 0 < rel_err(f8, ref) <= 1.5 * amplification * U_FP8


def test_mtp_layer_equals_independent_computation(tmp_path):
    """Oracle: transformers' own 1-layer GlmMoeDsa model holding the MTP block, fed eh_proj(...) by hand."""
    from transformers import GlmMoeDsaForCausalLM
    export_model("tiny-glm5", tmp_path, seed=7, dtype=torch.float32)
    llm = hd.LLM(str(tmp_path), device="cpu")
    sd = load_file(tmp_path / "model.safetensors")
    cfg = json.loads((tmp_path / "config.json").read_text())
    mtp = f"model.layers.{cfg['num_hidden_layers']}."
    one = {**cfg, "num_hidden_layers": 1, "mlp_layer_types": ["sparse"], "indexer_types": ["full"],
           "first_k_dense_replace": 0, "layer_types": None}
    one.pop("eos_token_id")
    weights = {"model.norm.weight": sd[mtp + "shared_head.norm.weight"], "lm_head.weight": sd["lm_head.weight"],
               "model.embed_tokens.weight": sd["model.embed_tokens.weight"]}
    weights.update({"model.layers.0." + k[len(mtp):]: v for k, v in sd.items() if k.startswith(mtp)
                    and not any(x in k for x in ("enorm", "hnorm", "eh_proj", "shared_head"))})
    (tmp_path / "oracle").mkdir()
    save_file(weights, tmp_path / "oracle" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "oracle" / "config.json").write_text(json.dumps(one))
    oracle, info = GlmMoeDsaForCausalLM.from_pretrained(tmp_path / "oracle", dtype=torch.float32,
                                                        output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    oracle.eval()
    assert torch.equal(oracle.model.layers[0].mlp.gate.e_score_correction_bias,
                       sd[mtp + "mlp.gate.e_score_correction_bias"])

    def rms(x, w, eps=1e-5):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(8))
    pos = torch.arange(29)[None]
    with torch.inference_mode():
        hidden = llm.model(ids[:, :29], pos, use_cache=False)
        ours = llm.model.mtp_logits(hidden, ids[:, 1:], pos)
        emb = sd["model.embed_tokens.weight"][ids[:, 1:]]
        emb[:, 0] = 0  # position 0's input embedding is zeroed
        x = torch.cat((rms(emb, sd[mtp + "enorm.weight"]), rms(hidden, sd[mtp + "hnorm.weight"])), -1)
        expected = oracle(inputs_embeds=x @ sd[mtp + "eh_proj.weight"].T).logits
    assert rel_err(ours, expected) <= 1e-4


def test_config_dims_disagreeing_with_tensors(tmp_path):
    export_model("tiny-glm5", tmp_path, seed=1)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["kv_lora_rank"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(hd.WeightsError, match=r"'model.layers.0.self_attn.kv_a_proj_with_mqa.weight' has shape "
                                              r"\[160, 256\], expected \[128, 256\]"):
        hd.LLM(str(tmp_path), device="cpu")


def test_missing_expert_tensor(tmp_path):
    export_model("tiny-dsv32", tmp_path, seed=1)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.layers.2.mlp.experts.13.up_proj.weight"]
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(hd.WeightsError, match=r"missing tensor 'model.layers.2.mlp.experts.13.up_proj.weight' "
                                              r"\(expected shape \[128, 256\]\)"):
        hd.LLM(str(tmp_path), device="cpu")


def test_missing_weight_scale_inv(fp8_glm, tmp_path):
    sd = load_file(fp8_glm / "model.safetensors")
    del sd["model.layers.3.self_attn.o_proj.weight_scale_inv"]
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((fp8_glm / "config.json").read_text())
    with pytest.raises(hd.WeightsError, match=r"FP8 tensor 'model.layers.3.self_attn.o_proj.weight' has no "
                                              r"'model.layers.3.self_attn.o_proj.weight_scale_inv'"):
        hd.LLM(str(tmp_path), device="cpu")


def test_sizing_only_presets_are_refused():
    with pytest.raises(hd.ConfigError, match="'glm-5' is for sizing only"):
        hd.LLM("glm-5", device="cpu")
