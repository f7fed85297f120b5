"""Batch-1 greedy decode speed of SmolLM2-135M on the CPU: hyperdecode vs transformers on the same weights.

Both run the weights hyperdecode dequantized from the embedded GGUF, in the same dtype, greedy, for the same
number of tokens after the same prompt; the first generated tokens must agree. Prints tok/s, the ratio, and the
fraction of the memory-bandwidth floor each reaches (bytes of weights + KV read per token / measured copy GB/s).

    python bench/cpu_decode.py [--tokens 64] [--dtype float32] [--threads N]
"""
from __future__ import annotations

import argparse
import time

import torch

import hyperdecode as hd
from hyperdecode.model.embedded import smollm2_path
from hyperdecode.model.weights import read_gguf


def copy_bandwidth_gbs(nbytes: int = 256 * 2**20, reps: int = 5) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9  # read + write


def hf_model_from(llm: hd.LLM):
    from transformers import LlamaConfig, LlamaForCausalLM
    c = llm.config
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                         max_position_embeddings=c.max_position_embeddings,
                         tie_word_embeddings=c.tie_word_embeddings, bos_token_id=None, eos_token_id=None,
                         pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM(hf_cfg)
    sd = {("lm_head.weight" if k.startswith("lm_head") else f"model.{k}"): v.to(llm.model.embed_tokens.weight.dtype)
          for k, v in read_gguf(smollm2_path(), c).items()}
    if c.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, assign=True, strict=True)
    model.model.rotary_emb.to_empty(device="cpu")
    model.model.rotary_emb.__init__(hf_cfg)
    return model.eval()


def time_hf(model, prompt: list[int], n: int) -> tuple[float, list[int]]:
    ids = torch.tensor([prompt])
    kw = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        t = time.perf_counter()
        first = model.generate(ids, **{**kw, "max_new_tokens": 1, "min_new_tokens": 1})
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, **kw)
        e2e = time.perf_counter() - t
    assert first.shape[1] == len(prompt) + 1
    return (n - 1) / (e2e - ttft), out[0, len(prompt):].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="runs per engine, alternating; the best counts")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    llm = hd.LLM("smollm2", device="cpu", dtype=args.dtype)
    prompt = llm.tokenizer.encode("The history of the city of Paris begins")
    llm.generate(prompt, max_tokens=4, ignore_eos=True)  # warm-up
    hf_model = hf_model_from(llm)
    ours_tps, hf_tps = 0.0, 0.0
    for _ in range(args.repeats):  # alternate, so that machine noise hits both engines alike
        ours = llm.generate(prompt, max_tokens=args.tokens, ignore_eos=True)
        ours_tps = max(ours_tps, ours.stats.tokens_per_s)
        tps, hf_tokens = time_hf(hf_model, prompt, args.tokens)
        hf_tps = max(hf_tps, tps)

    agree = next((i for i, (a, b) in enumerate(zip(ours.token_ids, hf_tokens)) if a != b), len(hf_tokens))
    # per token every weight is read once, except the embedding table (one row)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in llm.model.named_parameters()
                       if n != "embed_tokens.weight")
    kv_bytes = llm.config.kv_bytes_per_token(llm.model.embed_tokens.weight.element_size()) * (
        len(prompt) + args.tokens // 2)
    bw = copy_bandwidth_gbs()
    floor_tps = bw * 1e9 / (weight_bytes + kv_bytes)
    print(f"SmolLM2-135M {args.dtype}, batch 1, {args.tokens} greedy tokens, {torch.get_num_threads()} threads; "
          f"copy bandwidth {bw:.1f} GB/s, {weight_bytes / 1e6:.0f} MB weights read per token -> floor {floor_tps:.1f} tok/s")
    print(f"{'engine':<14}{'tok/s':>8}{'TPOT ms':>9}{'% floor':>9}")
    for name, tps in (("hyperdecode", ours_tps), ("transformers", hf_tps)):
        print(f"{name:<14}{tps:>8.1f}{1e3 / tps:>9.1f}{100 * tps / floor_tps:>8.1f}%")
    print(f"ratio hyperdecode / transformers: {ours_tps / hf_tps:.2f}x (best of {args.repeats}); "
          f"greedy tokens agree for the first {agree} of {args.tokens}")


if __name__ == "__main__":
    main()
