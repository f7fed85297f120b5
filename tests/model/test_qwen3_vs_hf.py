"""The third family, added through the registry alone: the Qwen3 reference against transformers' own
Qwen3ForCausalLM on checkpoints written by save_pretrained (GQA, head_dim decoupled from hidden / heads, q/k norms,
tied and untied embeddings)."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.model.registry import family_of
from tests.conftest import incremental_logits, rel_err

CONFIGS = {"tied": dict(tie_word_embeddings=True), "untied": dict(tie_word_embeddings=False)}


def make_qwen3(seed: int, **overrides):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    kw = dict(vocab_size=301, hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
              initializer_range=0.15, bos_token_id=None, eos_token_id=None, pad_token_id=None,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    kw.update(overrides)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**kw)).eval()
    with torch.no_grad():  # norms start at 1: perturb them (q_norm and k_norm included) so they are really tested
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def get(name):
        if name not in made:
            ref = make_qwen3(21 + len(made), **CONFIGS[name])
            d = tmp_path_factory.mktemp(f"qwen3-{name}")
            ref.save_pretrained(d)
            made[name] = d, ref, hd.LLM(str(d), device="cpu")
        return made[name]
    return get


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(checkpoints, name):
    path, ref, llm = checkpoints(name)
    assert family_of(llm.config).name == "qwen3" and llm.config.head_dim * 6 != 96
    assert (path / "model.safetensors").exists()
    ids = torch.randint(0, 301, (57,), generator=torch.Generator().manual_seed(5)).tolist()
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    assert rel_err(llm.logits(ids), expected) <= 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_16_tokens_equal_transformers(checkpoints, name):
    _, ref, llm = checkpoints(name)
    prompt = torch.randint(0, 301, (11,), generator=torch.Generator().manual_seed(7)).tolist()
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
    assert llm.generate(prompt, max_tokens=16, ignore_eos=True).token_ids == out[0, len(prompt):].tolist()


def test_incremental_decode_equals_full_forward(checkpoints):
    _, _, llm = checkpoints("tied")
    ids = torch.randint(0, 301, (30,), generator=torch.Generator().manual_seed(6)).tolist()
    assert torch.allclose(incremental_logits(llm.model, ids, prefill=9), llm.logits(ids), atol=1e-5, rtol=1e-4)


def test_sliding_window_is_refused(tmp_path):
    ref = make_qwen3(3, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    ref.save_pretrained(tmp_path)
    with pytest.raises(hd.ConfigError, match="sliding-window attention"):
        hd.LLM(str(tmp_path), device="cpu")
