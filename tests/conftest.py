import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest-xdist runs one worker per core: more threads would oversubscribe
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")  # before torch and numpy load their thread pools

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def hf_llama_config(**overrides):
    from transformers import LlamaConfig
    kw = dict(vocab_size=301, hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.15,
              bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    kw.update(overrides)
    return LlamaConfig(**kw)


CONFIGS = {
    "gqa-untied": {},
    "tied-mha-bias": dict(tie_word_embeddings=True, num_key_value_heads=6, attention_bias=True, mlp_bias=True),
    "llama3-rope": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}),
    "linear-rope-headdim": dict(head_dim=24, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                              "factor": 2.0}),
}


def make_hf_model(name: str, seed: int):
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_llama_config(**CONFIGS[name])).eval()
    with torch.no_grad():  # HF starts norms at 1 and biases at 0; perturb them so they are really tested
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """(name, sharded) -> (directory, HF model) written with save_pretrained."""
    made = {}

    def get(name: str = "gqa-untied", sharded: bool = False):
        if (name, sharded) not in made:
            model = make_hf_model(name, seed=len(made) + 11)
            d = tmp_path_factory.mktemp(f"{name}-{'sharded' if sharded else 'single'}")
            model.save_pretrained(d, max_shard_size="60KB" if sharded else "1GB")
            made[name, sharded] = (d, model)
        return made[name, sharded]
    return get


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def incremental_logits(model, ids: list[int], prefill: int) -> torch.Tensor:
    """Logits of a prefill of `prefill` tokens, then one decode step per remaining token, through the cache."""
    model.setup_caches(1, len(ids) + 8)
    with torch.inference_mode():
        steps = [model.logits(model(torch.tensor([ids[:prefill]]), torch.arange(prefill)[None]))[0]]
        for p in range(prefill, len(ids)):
            steps.append(model.logits(model(torch.tensor([[ids[p]]]), torch.tensor([[p]])))[0])
    return torch.cat(steps)


def run_main(argv, capsys):
    """The `hyperdecode` command in this process (fast enough for long tables of bad command lines): exit code,
    stdout, stderr."""
    from hyperdecode.cli import main
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (--dist loadgroup), the tests of a module whose fixtures live for the module (a server, a
    world of processes, a loaded model) run on one worker, so each such fixture is built once."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        if any(d.scope in ("module", "class", "package") for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
