"""Writes a Llama GGUF the way llama.cpp's converter does (q/k rows permuted for pairwise RoPE)."""
import gguf
import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HF_TO_GGUF = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    hf = hf.removeprefix("model.")
    kind = hf.rsplit(".", 1)[1]
    base = hf.rsplit(".", 1)[0]
    if base.startswith("layers."):
        _, layer, rest = base.split(".", 2)
        return f"blk.{layer}.{HF_TO_GGUF[rest]}.{kind}"
    return f"{HF_TO_GGUF[base]}.{kind}"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_vocab(size: int):
    """Specials, the 256 ByteLevel characters, then merged tokens up to `size`."""
    from hyperdecode.model.tokenizer import byte_to_unicode
    chars = list(byte_to_unicode().values())
    tokens = SPECIALS + chars
    merges = []
    pairs = [("t", "h"), ("h", "e"), ("th", "e"), ("Ġ", "t"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n")]
    for a, b in pairs:
        if len(tokens) < size:
            merges.append(f"{a} {b}")
            tokens.append(a + b)
    while len(tokens) < size:
        tokens.append(f"<unused{len(tokens)}>")
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, merges


def write_gguf(path, hf_model, types: dict[str, "gguf.GGMLQuantizationType"] | None = None,
               default=gguf.GGMLQuantizationType.F32, chat_template: str | None = None):
    """types maps a GGUF base name (e.g. 'attn_q', 'token_embd') to its tensor type; norms stay F32."""
    cfg = hf_model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)
    tokens, token_types, merges = byte_vocab(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    for name, t in hf_model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        g = gguf_name(name)
        arr = t.float().numpy()
        if g.endswith("attn_q.weight"):
            arr = permute(arr, cfg.num_attention_heads)
        elif g.endswith("attn_k.weight"):
            arr = permute(arr, cfg.num_key_value_heads)
        base = g.split(".")[-2]
        qtype = gguf.GGMLQuantizationType.F32 if arr.ndim == 1 else (types or {}).get(base, default)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(g, arr)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(g, arr.astype(np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
