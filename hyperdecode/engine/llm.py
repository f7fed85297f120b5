"""`hd.LLM`: the public entry point — load a model, then logits / generate / stream / chat."""
from __future__ import annotations

from typing import Any, Iterator

import torch

from ..errors import ConfigError, SequenceError
from ..model.loader import LoadedModel, load_model, resolve_device, resolve_dtype
from ..model.quant import check_activations, default_activations, set_activations
from .autoselect import fastest
from .backends import NAMES as BACKENDS, check_backend, make_runner, plan
from .core import EngineCore
from .output import Generation, OutputStream
from .inputs import InputProcessor, Prompt
from .sampling import SamplingParams
from .sequence import Sequence

__all__ = ["LLM", "BACKENDS", "check_backend", "check_activations"]

DEFAULT_MAX_TOKENS = 64


class LLM:
    """A loaded model and its engine core (caches allocated on first use, grown when a call needs more).

    >>> llm = LLM("tiny-llama", device="cpu", seed=0)
    >>> g = llm.generate("hello", max_tokens=4)
    >>> len(g.token_ids) <= 4 and g.stats.prompt_tokens == 5
    True

    max_num_batched_tokens: tokens one step may feed (decode rows plus prompt chunks): prompts longer than what
    is left are fed in chunks over several steps (chunked prefill); None feeds whole prompts.
    parallel: "tp" (tensor parallel) or "hetero" (GLM-5 / DeepSeek-V3.2: rank 0 runs the DSA indexer, the other
    ranks the attention, all of them the MoE) over the ranks torchrun started; rank 0 leads, the others follow.
    enable_prefix_caching: a prompt starts after the longest prefix a cache row still holds (engine/prefix.py).
    backend: "auto" (the default) is the fastest for this model here, measured once and cached (autoselect.py): on the
    CPU the reference or the native decode step (native.py), on a GPU the reference, CUDA graphs (graph.py) or the
    megakernel.
    quantize: "auto" keeps a GGUF's Q4_0 / Q4_1 / Q8_0 blocks quantized on the CPU with the reference and native
    backends (model/quant.py: ~4.5 or 8.5 bits a weight read per token instead of 32); "none" dequantizes them; "int8" /
    "int4" quantize an unquantized Llama-family checkpoint's projections and LM head (weight-only, 32-value
    blocks). backend "auto" may still dequantize kept blocks where that measured faster here.
    activations: how decode rows meet quantized weights on the CPU: "fp32" (exact: the dequantized reference's
    results up to the order of the sums) or "int8" (each 32-value block of activations rounded to int8, as llama.cpp
    does: faster, within a stated bound of the exact result, model/csrc/qmatmul.c); "auto" (the default) is fp32
    where the exact kernels beat llama.cpp (x86: AVX2, AVX-512) and int8 on ARM64 NEON, where only the int8 path
    matches llama.cpp's instruction count per block (bench/NOTES.md).
    """

    def __init__(self, model: str = "smollm2", device: str = "auto", dtype: str = "float32",
                 backend: str = "auto", seed: int = 0, max_num_batched_tokens: int | None = None,
                 parallel: str | None = None, enable_prefix_caching: bool = True, quantize: str = "auto",
                 activations: str = "auto"):
        check_backend(backend, resolve_device(device))
        check_activations(activations, quantize)
        split = None if parallel is None else plan(parallel)  # registered by hyperdecode/parallel (backends.py)
        if split is not None:  # one process per GPU under torchrun: this rank's shard of the model
            if backend not in ("reference", "auto"):
                raise ConfigError(f"parallel='{parallel}' runs the reference backend (got backend '{backend}')")
            loaded = LoadedModel(model, *split.load(model, resolve_device(device), resolve_dtype(dtype), seed))
        else:
            # graph and mega read the weights as tensors; auto picks the reference or native on the CPU, and on a
            # GPU the blocks are dequantized anyway
            keep = quantize if backend in ("reference", "native", "auto") else "none"
            loaded = load_model(model, device=device, dtype=dtype, seed=seed, quantize=keep)
        self.name = loaded.name
        self.config = loaded.cfg
        self.model = loaded.model
        self._tokenizer = loaded.tokenizer
        self.fp8_weights = loaded.fp8_weights  # raw (float8 weight, scale_inv) of an FP8 checkpoint, by HF name
        self.device = self.model.device
        self.activations = activations = default_activations(self.model) if activations == "auto" else activations
        if set_activations(self.model, activations) == 0 and activations != "fp32":
            raise ConfigError(f"activations '{activations}' applies to weights kept quantized on the CPU (a GGUF's "
                              f"blocks, or quantize 'int8' / 'int4'); '{model}' has none here")
        self.parallel = parallel
        if split is not None:  # rank 0 leads the steps, the other ranks replay them (the plan's runners)
            self.backend, self.rank, self.runner = "reference", split.rank(), split.runner(self.model)
        else:
            options = {"fp8": bool(self.fp8_weights)}
            may_dequantize = quantize == "auto" and activations == "fp32"
            self.backend = fastest(self.model, options, may_dequantize) if backend == "auto" else backend
            self.rank, self.runner = 0, make_runner(self.backend, self.model, **options)
        self.core = EngineCore(self.runner, max_num_batched_tokens, enable_prefix_caching)
        if split is not None:
            self.core.isolate_faults = False  # a retry row by row would be rank 0's alone
        self.inputs = InputProcessor(self._tokenizer, self.config.vocab_size, self.config.eos_token_ids,
                                     self.max_context)

    @property
    def backend_label(self) -> str:
        """The backend and, on the CPU, what its kernels run: e.g. "native (avx2+fma+f16c, fp32 activations)"."""
        if self.device.type != "cpu" or self.backend not in ("native", "reference"):
            return self.backend
        from ..model.quant import QuantLinear, kernel_isa
        if any(isinstance(m, QuantLinear) for m in self.model.modules()):
            return f"{self.backend} ({kernel_isa()}, {self.activations} activations)"
        if self.backend == "native":
            return f"native ({kernel_isa()}, fp32 weights)"
        return self.backend

    @property
    def speculative(self) -> str | None:
        """The speculative decoding every step verifies, as "method:k" (None: off)."""
        spec = self.core.speculative
        return None if spec is None else f"{spec.method}:{spec.num_speculative_tokens}"

    def speculate(self, spec: str | dict | None) -> None:
        """Turns speculative decoding on for every later request ("ngram:4", vLLM's config dict) or off (None)."""
        self.core.speculate(spec)

    @property
    def prefix_caching(self) -> bool:
        return self.core.prefix_caching

    def reset_prefix_cache(self) -> None:
        """Forgets every cached prefix (vLLM's `LLM.reset_prefix_cache`): later prompts are computed in full."""
        self.core.scheduler.reset_prefix_cache()

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise ConfigError(f"model '{self.name}' has no tokenizer (no tokenizer.json); pass token ids")
        return self._tokenizer

    @property
    def max_context(self) -> int:
        return self.config.max_position_embeddings

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """[len, vocab] float32 logits of one full causal forward, without the KV cache."""
        ids = self.inputs.prompt_ids(list(token_ids))
        tokens = torch.tensor([ids], device=self.device)
        pos = torch.arange(len(ids), device=self.device)[None]
        return self.model.logits(self.model(tokens, pos, use_cache=False))[0]

    def _requests(self, prompts: list[Prompt], params: SamplingParams,
                  messages: list[Any] | None = None) -> list[tuple[Sequence, OutputStream]]:
        if messages is not None:
            return [self.inputs.process(params=params, messages=m, default_max_tokens=DEFAULT_MAX_TOKENS)
                    for m in messages]
        return [self.inputs.process(p, params, default_max_tokens=DEFAULT_MAX_TOKENS) for p in prompts]

    def _run(self, requests: list[tuple[Sequence, OutputStream]],
             speculative: str | dict | None = None) -> Iterator[dict[Sequence, str]]:
        """Runs the requests together on the engine core (verifying drafts when `speculative` names a method);
        after each step yields the new final text by sequence."""
        self.core.acquire("an hd.LLM call (one at a time; a server, if one runs it, takes requests over HTTP)")
        if self.core.has_unfinished:  # sequences someone added by hand and has not stepped to their end
            self.core.release()
            raise RuntimeError("this LLM's engine core is busy (another generation is in flight); one caller at a "
                               "time")
        try:
            longest = max(seq.num_tokens + seq.params.max_tokens for seq, _ in requests)
            self.core.reserve(len(requests), min(longest, self.max_context))
            self.core.speculate(speculative)
            for seq, stream in requests:
                self.core.add(seq, stream)
            while self.core.has_unfinished:
                outputs = self.core.step()
                for out in outputs:
                    if out.finish_reason == "error":
                        raise SequenceError(f"a sequence failed in the engine: {out.error}")
                yield {out.seq: out.text for out in outputs}
        finally:  # an abandoned stream frees its slots
            for seq, _ in requests:
                self.core.abort(seq)
            self.core.release()

    def generate_batch(self, prompts: list[Prompt], speculative: str | dict | None = None,
                       **sampling: Any) -> list[Generation]:
        """Generates for several prompts of any lengths in one batch; results equal one-by-one generation.
        speculative: "mtp:K", "ngram:K", "suffix:K" or vLLM's config dict (verify K draft tokens per step), or
        None."""
        if not prompts:
            return []
        requests = self._requests(prompts, SamplingParams(**sampling))
        for _ in self._run(requests, speculative):
            pass
        return [stream.result() for _, stream in requests]

    def generate(self, prompt: Prompt, max_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, stop: list[str] | str | None = None,
                 ignore_eos: bool = False, speculative: str | dict | None = None) -> Generation:
        """max_tokens None: 64, or what the context has room for; speculative: see `generate_batch`."""
        return self.generate_batch([prompt], max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                   top_k=top_k, seed=seed, stop=stop, ignore_eos=ignore_eos,
                                   speculative=speculative)[0]

    def stream(self, prompt: Prompt, speculative: str | dict | None = None, **sampling: Any) -> Iterator[str]:
        """Yields text pieces as they become final; `last_generation` holds the result afterwards."""
        requests = self._requests([prompt], SamplingParams(**sampling))
        seq, stream = requests[0]
        for pieces in self._run(requests, speculative):
            if pieces.get(seq):
                yield pieces[seq]
        self.last_generation = stream.result()

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        return self.inputs.chat_prompt(messages)

    def chat(self, messages: list[dict[str, Any]], speculative: str | dict | None = None,
             **sampling: Any) -> Generation:
        requests = self._requests([], SamplingParams(**sampling), messages=[messages])
        for _ in self._run(requests, speculative):
            pass
        return requests[0][1].result()
