"""GGUF loading: gguf's dequantizer, llama.cpp's q/k permutation, tokenizer from metadata; oracle = transformers."""
import gguf
import numpy as np
import pytest
import torch

import hyperdecode as hd
from hyperdecode.model.llama import LlamaConfig
from hyperdecode.model.weights import gguf_metadata, open_gguf, read_gguf
from tests.conftest import make_hf_model, rel_err
from tests.model.gguf_util import write_gguf

Q = gguf.GGMLQuantizationType
MIXED = {"token_embd": Q.Q8_0, "output": Q.F16, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.BF16,
         "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.F16}


def roundtrip(t: torch.Tensor, qtype) -> torch.Tensor:
    if qtype == Q.F32 or t.ndim == 1:
        return t
    if qtype == Q.F16:
        return t.half().float()
    arr = gguf.quants.dequantize(gguf.quants.quantize(t.float().numpy(), qtype), qtype)
    return torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(t.shape)


@pytest.mark.parametrize("types", [None, MIXED], ids=["f32", "mixed-quant"])
def test_gguf_logits_match_transformers(tmp_path, types):
    ref = make_hf_model("gqa-untied", seed=21)
    path = write_gguf(tmp_path / "m.gguf", ref, types)
    # Row-wise block quantization commutes with the row permutation, so the oracle is the round-tripped weights.
    from tests.model.gguf_util import gguf_name
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(roundtrip(p, (types or {}).get(gguf_name(name).split(".")[-2], Q.F32)))
    llm = hd.LLM(str(path), device="cpu")
    ids = torch.randint(0, 301, (33,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    assert rel_err(llm.logits(ids), expected) <= 1e-4


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_dequantization_equals_gguf_dequantizer(tmp_path, qtype):
    ref = make_hf_model("gqa-untied", seed=22)
    path = write_gguf(tmp_path / "m.gguf", ref, default=qtype)
    reader = open_gguf(path)
    cfg = LlamaConfig.from_gguf_metadata(gguf_metadata(reader))
    ours = read_gguf(path, cfg, reader)
    t = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    assert t.tensor_type == qtype
    official = gguf.quants.dequantize(t.data, t.tensor_type).reshape(cfg.intermediate_size, cfg.hidden_size)
    assert torch.equal(ours["layers.1.mlp.up_proj.weight"], torch.from_numpy(np.array(official, np.float32)))
    original = ref.model.layers[1].mlp.up_proj.weight.detach()
    assert rel_err(ours["layers.1.mlp.up_proj.weight"], original) < 0.2


def test_gguf_tokenizer_matches_transformers_conversion(tmp_path):
    from transformers import AutoTokenizer
    ref = make_hf_model("gqa-untied", seed=23)
    write_gguf(tmp_path / "m.gguf", ref, chat_template="{{ messages[0]['content'] }}")
    ours = hd.LLM(str(tmp_path / "m.gguf"), device="cpu").tokenizer
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    for text in ["the theory then", "in 2024: 12345 é ∑ 日本 <|im_start|>x<|im_end|>", "  two  spaces\n\tand tab"]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == text
    assert ours.eos_token_ids == [0, 2]
    assert ours.apply_chat_template([{"role": "user", "content": "hey"}]) == "hey"
