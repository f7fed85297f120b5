"""A GGUF converted once into the project's cache, so that later loads skip parsing and dequantizing it.

The first load of a GGUF with its blocks kept quantized (quant.py) writes a folder under `<cache>/converted/`:
`weights.pt` (the built model's state: packed blocks, norms, the embedding table), `model.json` (the family, its
config, which projections are packed and how) and the tokenizer (`tokenizer.json`, `tokenizer_meta.json`). Later
loads build the module on the meta device and take the tensors memory-mapped from `weights.pt`: no GGUF parse, no
dequantization. The folder's name is `<stem>-<dtype>-<path key>-<version key>`: the version key follows the file's
size, modification time and this format, so a changed file is converted again and its old conversion removed
(one conversion per file and dtype). Files under `MIN_BYTES` parse in well under a second and are not converted.

>>> key_for(Path("/models/a.gguf"), size=10, mtime_ns=5) == key_for(Path("/models/a.gguf"), size=10, mtime_ns=6)
False
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .quant import Packed, QuantLinear
from .registry import FAMILIES, family_of
from .tokenizer import Tokenizer

__all__ = ["converted_dir", "save_converted", "load_converted", "key_for", "FORMAT"]

FORMAT = 2  # 2: fp16 block scales
MIN_BYTES = 16 << 20


def key_for(path: Path, size: int, mtime_ns: int) -> str:
    text = f"{FORMAT}|{path.resolve()}|{size}|{mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def converted_dir(path: Path, dtype: torch.dtype) -> Path | None:
    """Where the conversion of the GGUF at `path` to `dtype` lives (it may not exist yet); None for a small file."""
    from .embedded import cache_dir
    st = path.stat()
    if st.st_size < MIN_BYTES:
        return None
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    name = f"{path.stem}-{str(dtype).removeprefix('torch.')}-{where}"
    return cache_dir() / "converted" / f"{name}-{key_for(path, st.st_size, st.st_mtime_ns)}"


def save_converted(out: Path, model: nn.Module, cfg, tokenizer: Tokenizer) -> None:
    """Writes the folder atomically (a half-written conversion is never read)."""
    packed = {name: {"kind": m.kind, "in": m.in_features, "out": m.out_features, "c": m.c is not None,
                     "bias": m.bias is not None}
              for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    meta = {"format": FORMAT, "family": family_of(cfg).name, "config": dataclasses.asdict(cfg),
            "dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch."), "packed": packed}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".partial-"))
    try:
        torch.save(model.state_dict(), tmp / "weights.pt")
        (tmp / "model.json").write_text(json.dumps(meta))
        tokenizer.tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_meta.json").write_text(json.dumps({
            "bos_token_id": tokenizer.bos_token_id, "eos_token_ids": tokenizer.eos_token_ids,
            "add_bos": tokenizer.add_bos, "chat_template": tokenizer.chat_template}))
        os.replace(tmp, out)
        stale = out.name.rsplit("-", 1)[0] + "-"
        for old in out.parent.glob(stale + "*"):  # earlier versions of the same file in the same dtype
            if old != out and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        if out.exists():  # another process converted it first
            return
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_converted(folder: Path, device: torch.device):
    """(config, model, tokenizer) from a converted folder, the tensors memory-mapped."""
    from tokenizers import Tokenizer as HFTokenizer
    meta = json.loads((folder / "model.json").read_text())
    family = next(f for f in FAMILIES if f.name == meta["family"])
    cfg = family.config(**meta["config"])
    with torch.device("meta"):
        model = family.model(cfg, False).to(getattr(torch, meta["dtype"]))
        for name, p in meta["packed"].items():
            owner, _, attr = name.rpartition(".")
            parent = model.get_submodule(owner) if owner else model
            if hasattr(parent, attr):
                delattr(parent, attr)
            blocks = (p["out"], p["in"] // 32)
            scales = torch.empty(blocks, dtype=torch.float16)
            offsets = torch.empty(blocks, dtype=torch.float16) if p["c"] else None
            packed = Packed(p["kind"], torch.empty(p["out"], p["in"] * p["kind"] // 8, dtype=torch.uint8), scales,
                            offsets, p["in"])
            bias = nn.Parameter(torch.empty(p["out"])) if p["bias"] else None
            setattr(parent, attr, QuantLinear(packed, bias))
    state = torch.load(folder / "weights.pt", mmap=True, weights_only=True, map_location=device)
    model.load_state_dict(state, assign=True, strict=True)
    model.inv_freq = torch.zeros(model.inv_freq.shape, dtype=torch.float32, device=device)
    model.init_buffers()
    tmeta = json.loads((folder / "tokenizer_meta.json").read_text())
    tok = Tokenizer(HFTokenizer.from_file(str(folder / "tokenizer.json")), bos_token_id=tmeta["bos_token_id"],
                    eos_token_ids=tmeta["eos_token_ids"], add_bos=tmeta["add_bos"],
                    chat_template=tmeta["chat_template"])
    return cfg, model.eval(), tok
