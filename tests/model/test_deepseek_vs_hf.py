"""The GLM-5 / DeepSeek-V3.2 / DeepSeek-V3 reference against transformers' own classes, on save_pretrained output."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.model.presets import PRESETS
from tests.conftest import incremental_logits, rel_err

SEQ = 40  # longer than index_topk (16): the indexer really selects


def hf_model(kind: str, seed: int):
    import transformers
    cfg = dict(PRESETS["tiny-glm5" if kind != "deepseek_v32" else "tiny-dsv32"].hf_config)
    cfg.update(initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if kind == "deepseek_v3":  # no indexer; q without LoRA; group-limited routing
        for k in ("index_n_heads", "index_head_dim", "index_topk", "model_type"):
            cfg.pop(k)
        cfg.update(q_lora_rank=None, n_group=4, topk_group=2)
    if kind == "glm_moe_dsa_shared":  # GLM-5.2 IndexShare: full, shared, full, shared
        cfg.update(indexer_types=["full", "shared", "full", "shared"])
    cls, conf = {"glm_moe_dsa": ("GlmMoeDsaForCausalLM", "GlmMoeDsaConfig"),
                 "glm_moe_dsa_shared": ("GlmMoeDsaForCausalLM", "GlmMoeDsaConfig"),
                 "deepseek_v32": ("DeepseekV32ForCausalLM", "DeepseekV32Config"),
                 "deepseek_v3": ("DeepseekV3ForCausalLM", "DeepseekV3Config")}[kind]
    cfg.pop("model_type", None)
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(getattr(transformers, conf)(**cfg)).eval()
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                t.copy_(0.05 * torch.randn_like(t))
            elif name.endswith("norm.weight") or name.endswith("norm.bias"):
                t.add_(0.1 * torch.randn_like(t))
    return model


KINDS = ["glm_moe_dsa", "deepseek_v32", "deepseek_v3", "glm_moe_dsa_shared"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}

    def get(kind):
        if kind not in made:
            ref = hf_model(kind, seed=31 + len(made))
            d = tmp_path_factory.mktemp(kind)
            ref.save_pretrained(d)
            made[kind] = d, ref, hd.LLM(str(d), device="cpu")
        return made[kind]
    return get


def random_ids(n, seed, vocab=512):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(checkpoints, kind):
    _, ref, llm = checkpoints(kind)
    assert llm.config.model_type == kind.removesuffix("_shared")
    ids = random_ids(SEQ, 1)
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    assert rel_err(llm.logits(ids), expected) <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_latent_decode_equals_full_forward(checkpoints, kind):
    _, _, llm = checkpoints(kind)
    ids = random_ids(SEQ, 2)
    full = llm.logits(ids)
    incremental = incremental_logits(llm.model, ids, prefill=5)
    assert rel_err(incremental, full) <= 1e-5, (incremental - full).abs().max()
    assert torch.equal(incremental.argmax(-1), full.argmax(-1))


@pytest.mark.parametrize("kind", ["glm_moe_dsa", "deepseek_v32", "deepseek_v3"])
def test_greedy_generate_equals_transformers(checkpoints, kind):
    _, ref, llm = checkpoints(kind)
    prompt = random_ids(9, 3)
    ref.generation_config.eos_token_id = None
    ref.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=36, min_new_tokens=36, do_sample=False)
    got = llm.generate(prompt, max_tokens=36, ignore_eos=True)
    assert got.token_ids == out[0, len(prompt):].tolist()


def test_batch_of_different_lengths_equals_one_by_one(checkpoints):
    _, _, llm = checkpoints("glm_moe_dsa")
    prompts = [random_ids(n, 10 + n) for n in (3, 21, 1, 12)]
    batched = llm.generate_batch(prompts, max_tokens=20, ignore_eos=True)
    for p, b in zip(prompts, batched):
        assert b.token_ids == llm.generate(p, max_tokens=20, ignore_eos=True).token_ids


def test_sparsity_is_active_and_ties_break_to_lower_positions():
    from hyperdecode.model.deepseek import Indexer
    llm = hd.LLM("tiny-glm5", device="cpu")
    indexer: Indexer = llm.model.layers[0].self_attn.indexer
    with torch.no_grad():
        indexer.weights_proj.weight.zero_()  # every score ties at 0
        B, S, T = 1, 3, 40
        x = torch.randn(B, S, 256)
        causal = torch.arange(T)[None, None, :] <= torch.tensor([37, 38, 39])[None, :, None]
        cos, sin = torch.ones(B, S, 16), torch.zeros(B, S, 16)
        sel = indexer.select(x, torch.randn(B, S, 128), cos, sin, torch.randn(B, T, 128), causal)
    assert sel.sum(-1).tolist() == [[16, 16, 16]]
    assert sel[0, :, :16].all() and not sel[0, :, 16:].any()
