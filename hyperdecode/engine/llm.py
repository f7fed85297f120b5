"""`hd.LLM`: the public entry point — load a model, then logits / generate / stream / chat."""
from __future__ import annotations

from typing import Any, Iterator

import torch

from ..errors import ConfigError
from ..model.loader import load_model
from .graph import GraphRunner
from .mega.runner import MegaRunner
from .runner import ReferenceRunner
from .scheduler import run
from .sampling import SamplingParams
from .sequence import Generation, Sequence

__all__ = ["LLM"]

BACKENDS = ("reference", "graph", "mega", "auto")
Prompt = str | list[int]


class LLM:
    """A loaded model.

    >>> llm = LLM("tiny-llama", device="cpu", seed=0)
    >>> g = llm.generate("hello", max_tokens=4)
    >>> len(g.token_ids) <= 4 and g.stats.prompt_tokens == 5
    True
    """

    def __init__(self, model: str = "smollm2", device: str = "auto", dtype: str = "float32",
                 backend: str = "reference", seed: int = 0):
        if backend not in BACKENDS:
            raise ConfigError(f"backend '{backend}' is not available (available: {', '.join(BACKENDS)})")
        loaded = load_model(model, device=device, dtype=dtype, seed=seed)
        self.name, self.config, self.model, self._tokenizer = loaded.name, loaded.cfg, loaded.model, loaded.tokenizer
        self.fp8_weights = loaded.fp8_weights  # raw (float8 weight, scale_inv) of an FP8 checkpoint, by HF name
        self.device = self.model.embed_tokens.weight.device
        if backend == "auto":  # the megakernel and CUDA graphs only pay on a GPU; on the CPU the reference is fastest
            backend = "reference" if self.device.type != "cuda" else "mega" if MegaRunner.supports(self.model) \
                else "graph"
        runners = {"reference": ReferenceRunner, "graph": GraphRunner, "mega": MegaRunner}
        self.runner = runners[backend](self.model)
        self.backend = backend

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise ConfigError(f"model '{self.name}' has no tokenizer (no tokenizer.json); pass token ids")
        return self._tokenizer

    @property
    def max_context(self) -> int:
        return self.config.max_position_embeddings

    def encode(self, prompt: Prompt) -> list[int]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ValueError("prompt is empty")
        vocab = self.config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if len(ids) >= self.max_context:
            raise ValueError(f"This model's maximum context length is {self.max_context} tokens; "
                             f"the prompt has {len(ids)} tokens")
        return ids

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """[len, vocab] float32 logits of one full causal forward, without the KV cache."""
        ids = self.encode(list(token_ids))
        tokens = torch.tensor([ids], device=self.device)
        pos = torch.arange(len(ids), device=self.device)[None]
        return self.model.logits(self.model(tokens, pos, use_cache=False))[0]

    def _sequences(self, prompts: list[Prompt], params: SamplingParams) -> list[Sequence]:
        eos = frozenset(self.config.eos_token_ids)
        return [Sequence(self.encode(p), params, self._tokenizer, eos) for p in prompts]

    def generate_batch(self, prompts: list[Prompt], **sampling: Any) -> list[Generation]:
        """Generates for several prompts of any lengths in one batch; results equal one-by-one generation."""
        if not prompts:
            return []
        seqs = self._sequences(prompts, SamplingParams(**sampling))
        for _ in run(self.runner, seqs, self.max_context):
            pass
        return [s.result() for s in seqs]

    def generate(self, prompt: Prompt, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, stop: list[str] | str | None = None,
                 ignore_eos: bool = False) -> Generation:
        return self.generate_batch([prompt], max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                   top_k=top_k, seed=seed, stop=stop, ignore_eos=ignore_eos)[0]

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """Yields text pieces as they become final; `last_generation` holds the result afterwards."""
        seq = self._sequences([prompt], SamplingParams(**sampling))[0]
        for pieces in run(self.runner, [seq], self.max_context):
            if pieces[0]:
                yield pieces[0]
        self.last_generation = seq.result()

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat(self, messages: list[dict[str, Any]], **sampling: Any) -> Generation:
        return self.generate(self.chat_prompt(messages), **sampling)
