"""Inference workloads for the network simulator: request traces, a fitted synthetic generator, a model profile.

Trace formats: Mooncake JSON Lines (`timestamp` ms, `input_length`, `output_length`, `hash_ids`) and the Azure LLM
2023 CSV (`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`). The three public traces ship in the repository's
`data/traces/` (sources and licenses in `data/README.md`); `load_trace` takes their names as well as paths.

>>> trace_path("mooncake-conversation").name
'mooncake_conversation_trace.jsonl'
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from ...errors import ConfigError

__all__ = ["Workload", "load_trace", "trace_path", "data_dir", "synthetic", "BLOCK_TOKENS",
           "TRACES"]

BLOCK_TOKENS = 512  # tokens per Mooncake `hash_ids` block (the traces' README)
TRACES = {"mooncake-conversation": "mooncake_conversation_trace.jsonl",
          "mooncake-synthetic": "mooncake_synthetic_trace.jsonl", "azure-code": "azure_llm_2023_code.csv"}


def data_dir() -> Path:
    """The repository's `data/` folder (beside the `hyperdecode` package in a clone or an editable install), or
    `$HYPERDECODE_DATA` when set."""
    return Path(os.environ.get("HYPERDECODE_DATA") or Path(__file__).resolve().parents[3] / "data")


def trace_path(trace: str | Path) -> Path:
    """A shipped trace's file by name (`TRACES`), or the path given."""
    if str(trace) in TRACES:
        path = data_dir() / "traces" / TRACES[str(trace)]
        if not path.is_file():
            raise ConfigError(f"trace '{trace}': {path} is missing (it ships in the repository's data/traces/; "
                              "pass a path to a copy, or set HYPERDECODE_DATA to the folder holding traces/)")
        return path
    return Path(trace)


@dataclass
class Workload:
    """A request trace: arrival times, prompt and output lengths, and prefix block ids where known."""
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
    """Reads a Mooncake .jsonl or an Azure .csv trace (by content, not by its file name), given a path or the name
    of a shipped trace (`TRACES`).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.jsonl")
    >>> _ = open(p, "w").write('{"timestamp": 0, "input_length": 10, "output_length": 2}\\n'
    ...                        '{"timestamp": 1500, "input_length": 20, "output_length": 3}\\n')
    >>> w = load_trace(p); w.arrival_s.tolist(), w.input_tokens.tolist()
    ([0.0, 1.5], [10, 20])
    """
    path = trace_path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: trace file not found (a shipped trace's name: {', '.join(TRACES)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text trace") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the trace ({e.strerror})") from None
    if text.lstrip()[:1] == "{":
        return _read_mooncake(text, path)
    rows = list(csv.reader(text.splitlines()))
    if rows and [c.strip() for c in rows[0][:3]] == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
        return _read_azure(rows, path)
    raise ConfigError(f"{path}: unknown trace format (expected Mooncake JSON Lines or an Azure CSV with header "
                      "TIMESTAMP,ContextTokens,GeneratedTokens)")


def _read_mooncake(text: str, path: Path) -> Workload:
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


def _read_azure(rows: list[list[str]], path: Path) -> Workload:
    arrival, inputs, outputs = [], [], []
    for n, row in enumerate(rows[1:], 2):
        try:
            stamp = row[0].strip()
            base, frac = (stamp.split(".") + ["0"])[:2]
            arrival.append(datetime.strptime(base, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + frac))
            inputs.append(float(row[1]))
            outputs.append(float(row[2]))
        except (ValueError, IndexError) as e:
            raise ConfigError(f"{path}:{n}: not an Azure trace row ({e})") from None
    return _check(arrival, inputs, outputs, str(path))


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
