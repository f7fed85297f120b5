"""The reference forward against transformers' own LlamaForCausalLM, on checkpoints written by save_pretrained."""
import pytest
import torch

import hyperdecode as hd
from tests.conftest import CONFIGS, incremental_logits, rel_err


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(hf_checkpoint, name, sharded):
    path, ref = hf_checkpoint(name, sharded)
    if sharded:
        assert (path / "model.safetensors.index.json").exists()
    llm = hd.LLM(str(path), device="cpu")
    ids = torch.randint(0, ref.config.vocab_size, (57,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    got = llm.logits(ids)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-4


def test_incremental_decode_equals_full_forward(hf_checkpoint):
    path, _ = hf_checkpoint("llama3-rope")
    llm = hd.LLM(str(path), device="cpu")
    ids = torch.randint(0, 301, (40,), generator=torch.Generator().manual_seed(6)).tolist()
    full = llm.logits(ids)
    incremental = incremental_logits(llm.model, ids, prefill=9)
    assert torch.allclose(incremental, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gqa-untied", "tied-mha-bias"])
def test_greedy_generate_equals_transformers(hf_checkpoint, name):
    path, ref = hf_checkpoint(name)
    llm = hd.LLM(str(path), device="cpu")
    prompt = torch.randint(0, 301, (11,), generator=torch.Generator().manual_seed(7)).tolist()
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, min_new_tokens=40)
    expected = out[0, len(prompt):].tolist()
    got = llm.generate(prompt, max_tokens=40, ignore_eos=True)
    assert len(got.token_ids) == 40 and got.finish_reason == "length"
    assert got.token_ids == expected


def test_batch_of_different_lengths_equals_one_by_one(hf_checkpoint):
    path, _ = hf_checkpoint("gqa-untied")
    llm = hd.LLM(str(path), device="cpu")
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 301, (n,), generator=g).tolist() for n in (3, 17, 1, 9)]
    batched = llm.generate_batch(prompts, max_tokens=24, ignore_eos=True)
    for p, b in zip(prompts, batched):
        single = llm.generate(p, max_tokens=24, ignore_eos=True)
        assert b.token_ids == single.token_ids
        assert b.stats.prompt_tokens == len(p)


def test_bfloat16_close_to_float32(hf_checkpoint):
    path, ref = hf_checkpoint("gqa-untied")
    ids = torch.randint(0, 301, (20,), generator=torch.Generator().manual_seed(9)).tolist()
    f32 = hd.LLM(str(path), device="cpu").logits(ids)
    bf16 = hd.LLM(str(path), device="cpu", dtype="bfloat16")
    assert bf16.model.embed_tokens.weight.dtype == torch.bfloat16
    assert rel_err(bf16.logits(ids), f32) < 0.05
