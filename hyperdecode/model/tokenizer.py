"""Tokenizers from HF `tokenizer.json`, from GGUF metadata, or byte-level for random presets; Jinja chat templates."""
from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import ConfigError

__all__ = ["Tokenizer", "CHATML_TEMPLATE"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GGUF_PRE_TOKENIZERS = {"smollm": True, "gpt2": False, "default": False}  # name -> digits split one by one


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def template_json(value: Any, ensure_ascii: bool = False, indent: int | None = None,
                  separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """The `tojson` filter chat templates expect (transformers' own: json.dumps's options, no HTML escaping;
    Jinja's built-in one takes none of them)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class Tokenizer:
    def __init__(self, tok: HFTokenizer, *, bos_token_id: int | None = None, eos_token_ids: list[int] = (),
                 add_bos: bool = False, chat_template: str | None = None):
        self.tok = tok
        self.bos_token_id = bos_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.add_bos = add_bos and bos_token_id is not None
        self.chat_template = chat_template
        self._template = None

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """A token's own bytes (a byte-level token may be part of one UTF-8 character; its text alone is then
        U+FFFD), as OpenAI's logprobs report them."""
        piece = self.tok.id_to_token(token_id)
        if piece is None:
            return b""
        table = unicode_to_byte()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
        return self.decode([token_id]).encode()

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        if self.chat_template is None:
            raise ConfigError("this model has no chat template; use generate() with a plain prompt")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
                raise ConfigError(f"messages[{i}] must be a dict with a 'role' and a string 'content'")
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str):
                raise TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals.update(raise_exception=raise_exception,
                               strftime_now=lambda fmt: datetime.now().strftime(fmt))
            env.filters["tojson"] = template_json
            self._template = env.from_string(self.chat_template)
        bos = self.decode([self.bos_token_id]) if self.bos_token_id is not None else ""
        eos = self.decode(self.eos_token_ids[:1]) if self.eos_token_ids else ""
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=bos, eos_token=eos, **kwargs)

    def save(self, out_dir: str | Path) -> None:
        """Writes tokenizer.json and tokenizer_config.json (chat template, special tokens) into `out_dir`, as HF
        fast tokenizers and `from_hf_dir` read them."""
        out_dir = Path(out_dir)
        self.tok.save(str(out_dir / "tokenizer.json"))
        token = lambda i: None if i is None else self.tok.id_to_token(i)  # noqa: E731
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": self.chat_template,
                  "bos_token": token(self.bos_token_id), "add_bos_token": self.add_bos,
                  "eos_token": token(self.eos_token_ids[0]) if self.eos_token_ids else None}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def byte_level(cls, specials: list[str] = CHATML_SPECIALS, chat_template: str = CHATML_TEMPLATE) -> "Tokenizer":
        """Specials first, then one token per byte; no merges. Every string round-trips."""
        alphabet = byte_to_unicode()
        vocab = {s: i for i, s in enumerate(specials)}
        vocab.update({alphabet[b]: len(specials) + b for b in range(256)})
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        eos = [vocab[s] for s in ("<|im_end|>", "<|endoftext|>") if s in vocab]
        return cls(tok, eos_token_ids=eos, chat_template=chat_template)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], source: str = "gguf") -> "Tokenizer":
        kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
        if kind != "gpt2":
            raise ConfigError(f"{source}: tokenizer.ggml.model '{kind}' is not supported (expected 'gpt2' BPE)")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise ConfigError(f"{source}: tokenizer.ggml.pre '{pre}' is not supported "
                              f"(supported: {', '.join(GGUF_PRE_TOKENIZERS)})")
        tokens = meta["tokenizer.ggml.tokens"]
        types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        try:
            tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        except Exception as e:
            raise ConfigError(f"{source}: tokenizer.ggml.tokens/merges do not form a BPE vocabulary ({e})") from None
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if GGUF_PRE_TOKENIZERS[pre] else byte_level)
        tok.decoder = decoders.ByteLevel()
        control = [t for t, ty in zip(tokens, types) if ty in (3, 4)]  # CONTROL, USER_DEFINED
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eos_ids = [] if eos is None else [int(eos)]
        if "<|endoftext|>" in control:
            eos_ids.append(tokens.index("<|endoftext|>"))
        return cls(tok, bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_ids=sorted(set(eos_ids)),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                   chat_template=meta.get("tokenizer.chat_template"))

    @classmethod
    def from_hf_dir(cls, path: str | Path, eos_token_ids: list[int] = (),
                    bos_token_id: int | None = None) -> "Tokenizer | None":
        """Reads tokenizer.json (+ tokenizer_config.json / chat_template.jinja); None when there is none."""
        path = Path(path)
        if not (path / "tokenizer.json").exists():
            return None
        try:
            tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:
            raise ConfigError(f"{path / 'tokenizer.json'}: cannot load tokenizer ({e})") from None
        template = None
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.exists():
            try:
                tcfg = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{cfg_file}: not valid JSON ({e})") from None
            template = tcfg.get("chat_template")
            if isinstance(template, list):  # named templates: take "default"
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        return cls(tok, bos_token_id=bos_token_id, eos_token_ids=list(eos_token_ids), chat_template=template)
