"""What every family's config shares: the field checks and the HF config.json fields read the same way.

The family configs are `LlamaConfig` (llama.py), `Qwen3Config` (qwen3.py) and `DeepseekConfig`
(deepseek_config.py); `registry.ModelConfig` is any of them. Each has `from_dict` / `to_hf_dict`, `model_type`,
`source`, `eos_token_ids`, `max_position_embeddings`, `num_nextn_predict_layers`, and the sizing methods
`kv_bytes_per_token`, `index_key_bytes_per_token` and `cache_bytes_read`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ConfigError

__all__ = ["require_positive", "require_fields", "hf_rope", "hf_eos", "known_fields"]


def require_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """Raises ConfigError naming the first field of `names` that is not a positive integer."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{cfg.source}: field '{name}' must be a positive integer, got {value!r}")


def require_fields(d: dict[str, Any], names: tuple[str, ...], source: str) -> None:
    for name in names:
        if name not in d:
            raise ConfigError(f"{source}: required field '{name}' is missing")


def hf_rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling or None) from transformers 4 `rope_scaling` or transformers 5 `rope_parameters`."""
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    scaling = rope if rope.get("rope_type", "default") != "default" else None
    return float(theta), scaling


def hf_eos(d: dict[str, Any]) -> list[int]:
    eos = d.get("eos_token_id")
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def known_fields(cls: type, d: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    """The entries of `d` that are fields of the dataclass `cls` (minus `skip`), without None values."""
    names = {f.name for f in dataclasses.fields(cls)} - skip
    return {k: v for k, v in d.items() if k in names and v is not None}
