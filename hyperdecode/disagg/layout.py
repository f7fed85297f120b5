"""What an instance's cache looks like to a peer: every cache tensor of the model ([rows, max_seq, ...], position on
dim 1, so a row's positions first:last are one contiguous span), where it lives, and what identifies the model.
Two instances exchange rows only when `mismatch` finds nothing: same family, config, dtype, weights and tensors.

>>> from hyperdecode.model.loader import load_model
>>> model = load_model("tiny-llama").model
>>> model.setup_caches(2, 16)
>>> layout = CacheLayout.of(model, "tiny-llama")
>>> len(layout.tensors), layout.tensors[0].name, layout.tensors[0].token_bytes
(4, '0.k', 128)
>>> layout.span_bytes(0, 3)
1536
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..model.sizing import token_cache_bytes

__all__ = ["CacheLayout", "TensorLayout", "named_row_caches", "mismatch", "expected_bytes"]


@dataclass(frozen=True)
class TensorLayout:
    name: str  # "{layer}.{name}" as the megakernel names caches; "mtp.{name}" for the MTP layer's
    shape: tuple[int, ...]  # per token
    token_bytes: int
    row_bytes: int  # max_seq x token_bytes: the distance between two rows
    addr: int
    device: str  # "cpu" or "cuda:N"

    def span(self, row: int, first: int, last: int) -> tuple[int, int, int]:
        """(address, bytes, device id) of positions first:last of `row`: a NIXL descriptor."""
        device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
        return self.addr + row * self.row_bytes + first * self.token_bytes, (last - first) * self.token_bytes, \
            device_id


def named_row_caches(model: nn.Module, mtp: bool = False) -> dict[str, Tensor]:
    """The cache tensors a row's transfer spans: the layers' by "{layer}.{name}" and, with `mtp` (MTP speculation
    on: its drafter reads them), the MTP layer's by "mtp.{name}"."""
    named = dict(model.cache_tensors())
    extra = model.row_caches()[len(named):]
    if extra and mtp:
        names = model.mtp.self_attn.cache.names
        named.update({f"mtp.{name}": t for name, t in zip(names, extra)})
    return named


@dataclass
class CacheLayout:
    model: str  # the served name
    model_type: str
    dtype: str
    config_digest: str
    weights_digest: str
    rows: int
    max_seq: int
    tensors: list[TensorLayout]

    @classmethod
    def of(cls, model: nn.Module, name: str, mtp: bool = False) -> "CacheLayout":
        caches = named_row_caches(model, mtp)
        if not caches:
            raise RuntimeError("the model has no caches yet: set them up before describing them")
        tensors = []
        for key, t in caches.items():
            if not t.is_contiguous():
                raise RuntimeError(f"cache tensor {key} is not contiguous: its rows cannot be sent as spans")
            token_bytes = t[0, 0].numel() * t.element_size()
            tensors.append(TensorLayout(key, tuple(t.shape[2:]), token_bytes, t.shape[1] * token_bytes,
                                        t.data_ptr(), str(t.device)))
        first = next(iter(caches.values()))
        return cls(name, model.cfg.model_type, str(first.dtype).removeprefix("torch."), config_digest(model.cfg),
                   weights_digest(model), first.shape[0], first.shape[1], tensors)

    def spans(self, row: int, first: int, last: int) -> list[tuple[int, int, int]]:
        return [t.span(row, first, last) for t in self.tensors]

    def span_bytes(self, first: int, last: int) -> int:
        """Bytes of positions first:last of one row over every tensor."""
        return sum(t.token_bytes for t in self.tensors) * (last - first)

    @property
    def memory_type(self) -> str:
        return "VRAM" if self.tensors[0].device.startswith("cuda") else "DRAM"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheLayout":
        tensors = [TensorLayout(t["name"], tuple(t["shape"]), t["token_bytes"], t["row_bytes"], t["addr"], t["device"])
                   for t in d["tensors"]]
        return cls(**{**d, "tensors": tensors})

    def identity(self) -> str:
        return f"'{self.model}' ({self.model_type}, {self.dtype}, config {self.config_digest[:8]}, " \
               f"weights {self.weights_digest[:8]}, {len(self.tensors)} cache tensors)"


def mismatch(mine: CacheLayout, peer: CacheLayout) -> str | None:
    """What keeps two instances from exchanging cache rows (None: nothing)."""
    if mine.model_type != peer.model_type:
        return "the model family differs"
    if mine.config_digest != peer.config_digest:
        return "the model config differs"
    if mine.dtype != peer.dtype:
        return "the cache dtype differs"
    if mine.weights_digest != peer.weights_digest:
        return "the weights differ"
    ours = [(t.name, t.shape, t.token_bytes) for t in mine.tensors]
    theirs = [(t.name, t.shape, t.token_bytes) for t in peer.tensors]
    if ours != theirs:
        extra = sorted({t[0] for t in ours} ^ {t[0] for t in theirs})
        return "the cache layout differs" + (f" (tensors only one side has: {', '.join(extra[:4])})" if extra else "")
    return None


def expected_bytes(model: nn.Module, tokens: int, mtp: bool = False) -> int:
    """What a transfer of `tokens` prompt positions moves for this model, from its config alone (the function
    `inspect` and the fabric workload use): the engine keeps indexer keys at the cache dtype."""
    value_bytes = model.embed_tokens.weight.element_size()
    return token_cache_bytes(model.cfg, value_bytes, index_keys="values", mtp=mtp) * tokens


def config_digest(cfg: Any) -> str:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "source"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def weights_digest(model: nn.Module) -> str:
    """A fingerprint of the weights that is exact on any device: the first rows of the embedding table as float32."""
    rows = model.embed_tokens.weight[:8].detach().float().cpu().contiguous()
    return hashlib.sha256(rows.numpy().tobytes()).hexdigest()
