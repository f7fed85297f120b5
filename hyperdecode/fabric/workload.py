"""Inference workloads for the network simulator: request traces, a fitted synthetic generator, a model profile.

Trace formats: Mooncake JSON Lines (`timestamp` ms, `input_length`, `output_length`, `hash_ids`) and the Azure LLM
2023 CSV (`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["Workload", "load_trace", "synthetic", "ModelProfile", "BLOCK_TOKENS"]

BLOCK_TOKENS = 512  # tokens per Mooncake `hash_ids` block (the traces' README)


@dataclass
class Workload:
    arrival_s: np.ndarray  # sorted, first at 0
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str
    hash_ids: list[list[int]] | None = None  # per request, its prompt's 512-token block ids (Mooncake traces)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def scaled(self, rate_scale: float) -> "Workload":
        """The same requests arriving `rate_scale` times faster (load sweeps)."""
        if not rate_scale > 0:
            raise ConfigError(f"rate scale must be positive, got {rate_scale}")
        return Workload(self.arrival_s / rate_scale, self.input_tokens, self.output_tokens,
                        f"{self.source} x{rate_scale:g}", self.hash_ids)

    def head(self, n: int) -> "Workload":
        ids = self.hash_ids[:n] if self.hash_ids is not None else None
        return Workload(self.arrival_s[:n], self.input_tokens[:n], self.output_tokens[:n], f"{self.source}[:{n}]", ids)

    @property
    def rate(self) -> float:
        span = float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0
        return (len(self) - 1) / span if span > 0 else float("inf")


def _check(arrival: list, inputs: list, outputs: list, source: str, hash_ids: list | None = None) -> Workload:
    if not arrival:
        raise ConfigError(f"{source}: the trace has no requests")
    a, i, o = (np.asarray(x, dtype=np.float64) for x in (arrival, inputs, outputs))
    for name, v in (("input length", i), ("output length", o)):
        bad = np.nonzero(~(v >= 1))[0]
        if len(bad):
            raise ConfigError(f"{source}: request {int(bad[0])} has {name} {v[bad[0]]:g} (must be >= 1)")
    if (np.diff(a) < 0).any():
        raise ConfigError(f"{source}: timestamps go backwards at request {int(np.nonzero(np.diff(a) < 0)[0][0]) + 1}")
    return Workload(a - a[0], i.astype(np.int64), o.astype(np.int64), source, hash_ids)


def load_trace(path: str | Path) -> Workload:
    """Reads a Mooncake .jsonl or an Azure .csv trace (by content, not by name).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.jsonl")
    >>> _ = open(p, "w").write('{"timestamp": 0, "input_length": 10, "output_length": 2}\\n'
    ...                        '{"timestamp": 1500, "input_length": 20, "output_length": 3}\\n')
    >>> w = load_trace(p); w.arrival_s.tolist(), w.input_tokens.tolist()
    ([0.0, 1.5], [10, 20])
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: trace file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text trace") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the trace ({e.strerror})") from None
    first = text.lstrip()[:1]
    if first == "{":
        arrival, inputs, outputs, ids = [], [], [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                stamp = float(row["timestamp"])
                inputs.append(row["input_length"])
                outputs.append(row["output_length"])
                ids.append([int(h) for h in row["hash_ids"]] if "hash_ids" in row else None)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ConfigError(f"{path}:{n}: not a Mooncake trace row ({type(e).__name__}: {e})") from None
            if not (math.isfinite(stamp) and stamp >= 0):
                raise ConfigError(f"{path}:{n}: timestamp {row['timestamp']} must be a time in ms >= 0")
            arrival.append(stamp / 1000.0)
        return _check(arrival, inputs, outputs, str(path), ids if all(h is not None for h in ids) else None)
    rows = list(csv.reader(text.splitlines()))
    if rows and [c.strip() for c in rows[0][:3]] == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
        arrival, inputs, outputs = [], [], []
        for n, row in enumerate(rows[1:], 2):
            try:
                stamp = row[0].strip()
                base, frac = (stamp.split(".") + ["0"])[:2]
                t = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + frac)
                arrival.append(t)
                inputs.append(float(row[1]))
                outputs.append(float(row[2]))
            except (ValueError, IndexError) as e:
                raise ConfigError(f"{path}:{n}: not an Azure trace row ({e})") from None
        return _check(arrival, inputs, outputs, str(path))
    raise ConfigError(f"{path}: unknown trace format (expected Mooncake JSON Lines or an Azure CSV with header "
                      "TIMESTAMP,ContextTokens,GeneratedTokens)")


def synthetic(like: Workload, num_requests: int | None = None, rate: float | None = None, seed: int = 0
              ) -> Workload:
    """Poisson arrivals at `rate` (default: the trace's), log-normal input/output lengths fitted to `like`."""
    rng = np.random.default_rng(seed)
    n = num_requests or len(like)
    lam = rate or like.rate
    arrival = np.concatenate([[0.0], np.cumsum(rng.exponential(1 / lam, n - 1))])

    def draw(x: np.ndarray) -> np.ndarray:
        logs = np.log(x)
        v = rng.lognormal(logs.mean(), logs.std(), n)
        return np.clip(np.round(v), x.min(), x.max()).astype(np.int64)
    return Workload(arrival, draw(like.input_tokens), draw(like.output_tokens), f"synthetic({like.source})")


@dataclass
class ModelProfile:
    """Per-instance speeds, KV size and expert-parallel traffic. Defaults (GLM-5 on 8-GPU H800-class nodes):

    - KV: GLM-5's bf16 latent cache (89,856 B/token) plus its DSA indexer keys (78 layers × (128 FP8 + 4 B scale)
      = 10,296 B/token), 100,152 B/token in all (`hyperdecode inspect glm-5`);
    - prefill: 32,200 computed tok/s per 8-GPU node. DeepSeek's published H800 rate of 73,700 input tok/s counts
      the 56.3 % of tokens its prefix cache served (network.md §5) and this simulator has no prefix cache, so
      73,700 × (1 − 0.563) [derived];
    - decode step: 20 ms + 40 µs per running sequence (25 ms at a batch of 128) [assumption];
    - EP: each token's copy to an expert on another server costs `ep_bytes_per_copy` per MoE layer, an FP8
      dispatch (hidden + a 4 B scale per 128) and a bf16 combine (2 × hidden): 18,624 B at hidden 6,144, over
      `moe_layers` = 75 layers with `top_k` = 8 experts per token.
    """
    kv_bytes_per_token: int = 100_152
    prefill_tok_s: float = 32_200.0
    decode_step_s: float = 0.020
    decode_step_per_seq_s: float = 40e-6
    ep_bytes_per_copy: int = 18_624
    moe_layers: int = 75
    top_k: int = 8

    @classmethod
    def from_model(cls, name: str = "glm-5", kv_dtype: str = "bf16", **overrides: float) -> "ModelProfile":
        """The preset's KV bytes per token (the latent cache and, with DSA, the indexer keys that go with it) and
        its MoE shape (no EP traffic for a dense model)."""
        from ..model.loader import preset_config
        cfg = preset_config(name)
        kv = cfg.kv_bytes_per_token(2, fp8=kv_dtype == "fp8")
        index_keys = getattr(cfg, "index_key_bytes_per_token", lambda: 0)()
        hidden = cfg.hidden_size
        moe = list(getattr(cfg, "mlp_layer_types", [])).count("sparse")
        shape = {"ep_bytes_per_copy": hidden + hidden // 128 * 4 + 2 * hidden, "moe_layers": moe,
                 "top_k": getattr(cfg, "num_experts_per_tok", 0) if moe else 0}
        return cls(kv_bytes_per_token=kv + index_keys, **(shape | overrides))

    def prefill_s(self, tokens: int) -> float:
        return tokens / self.prefill_tok_s

    def step_s(self, batch: int) -> float:
        """One decode step's compute at `batch` running sequences."""
        return self.decode_step_s + self.decode_step_per_seq_s * batch

    def ep_copies(self, servers: int, prefill: bool) -> float:
        """Copies of one token per MoE layer sent to other servers, experts spread evenly over `servers`: decode
        (DeepEP's low-latency kernels) sends one per remote expert, top_k · (1 − 1/N); prefill (its normal
        kernels) one per remote server holding any of them, (N − 1)(1 − (1 − 1/N)^top_k)."""
        if servers < 2 or not self.top_k:
            return 0.0
        if prefill:
            return (servers - 1) * (1 - (1 - 1 / servers) ** self.top_k)
        return self.top_k * (1 - 1 / servers)

    def check(self) -> None:
        for name in ("kv_bytes_per_token", "prefill_tok_s", "decode_step_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model profile field '{name}' must be positive")
        for name in ("decode_step_per_seq_s", "ep_bytes_per_copy", "moe_layers", "top_k"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"model profile field '{name}' must be >= 0")
        if not math.isfinite(self.prefill_tok_s):
            raise ConfigError("model profile field 'prefill_tok_s' must be finite")
