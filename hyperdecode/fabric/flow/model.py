"""What the serving model needs to know of the model and the GPUs: KV bytes per token, prefill speed, the decode
step's time at each batch (from `hyperdecode plan`'s latency model), and the MoE's expert-parallel traffic.

The decode step comes from parallel/latency.py's `estimate` for the preset on a plan (`DecodePlan`: the hardware
row of hyperdecode/hardware.py, the GPUs of one decode replica, TP or hetero, the context). That model prices a
step of S tokens of one sequence (its MTP verify step); a batch of S sequences costs the same except that each
sequence reads its own DSA index keys, so the step at batch B is the model's S = B step without its MTP layer, plus
(B − 1) more sequences' keys at the streaming rate. For `tp` that is the model's batch step exactly; for `hetero`
rank 0 reads the keys, and adding them assumes its indexer stays on the critical path (an upper bound). The
latency model takes ~0.4 s per call, so the table is priced at batches 1, 2, 4, ... and the largest, linear in
between, and cached.

>>> ModelProfile().step_s(128)  # the affine fallback: 20 ms + 40 µs per sequence
0.02512
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError

__all__ = ["ModelProfile", "DecodePlan", "plan_step_table", "prefill_rate", "DEEPSEEK_COMPUTED_TOK_S"]

DEEPSEEK_COMPUTED_TOK_S = 73_700 * (1 - 0.563)  # DeepSeek-V3 per H800 node, less its 56.3 % prefix-cache hits


@dataclass(frozen=True)
class DecodePlan:
    """A decode replica as `hyperdecode plan` models it: `gpus` on one NVLink domain of `hardware`."""
    hardware: str = "h200"
    gpus: int = 8
    strategy: str = "tp"
    context: int = 12_288  # tokens in each sequence's cache (the trace's mean prompt + half its output)
    weight_dtype: str = "fp8"


@functools.lru_cache(maxsize=8)
def prefill_rate(model: str) -> float:
    """Computed prompt tokens/s per 8-GPU Hopper server for a preset: DeepSeek-V3's published rate scaled by its
    active parameters over the preset's (prefill is compute-bound: ~2 FLOPs per active parameter per token).

    >>> round(prefill_rate("glm-5"))  # 40.8 B active against DeepSeek-V3's 37.5 B
    29560
    """
    from ...model.loader import preset_config
    from ...model.sizing import size_model
    reference = size_model(preset_config("deepseek-v3.2")).active_params
    return DEEPSEEK_COMPUTED_TOK_S * reference / size_model(preset_config(model)).active_params


@functools.lru_cache(maxsize=32)
def plan_step_table(model: str, plan: DecodePlan, max_batch: int, kv_dtype: str = "bf16") -> tuple[float, ...]:
    """Decode step seconds at batch 1 .. max_batch (module docstring)."""
    from ...hardware import GPUS, machine
    from ...model.loader import preset_config
    from ...parallel.latency import estimate
    if plan.hardware not in GPUS:
        raise ConfigError(f"hardware '{plan.hardware}' is not a GPU of the hardware table ({', '.join(GPUS)})")
    if max_batch < 1:
        raise ConfigError(f"the decode batch must be at least 1, got {max_batch}")
    cfg = preset_config(model)
    hw = machine(plan.hardware)
    kv_bytes = 1 if kv_dtype == "fp8" else 2
    weight_bytes = 1.0 if plan.weight_dtype == "fp8" else 2.0
    grid = sorted({2 ** k for k in range(int(math.log2(max_batch)) + 1)} | {max_batch})
    steps = []
    for batch in grid:
        est = estimate(cfg, plan.gpus, hw, plan.context, plan.strategy, mtp=batch - 1, weight_bytes=weight_bytes,
                       kv_bytes=kv_bytes)
        keys = sum(layer.index_key_bytes for layer in est.layers)  # one sequence's, per rank that reads them
        extra_us = (batch - 1) * keys / hw.stream_bps * 1e6
        steps.append((est.step_us - est.mtp_us + extra_us) / 1e6)
    table = np.interp(np.arange(1, max_batch + 1), grid, steps)
    return tuple(float(x) for x in table)


@dataclass
class ModelProfile:
    """Per-instance speeds, KV size and expert-parallel traffic. Defaults (GLM-5 on 8-GPU H800-class nodes):

    - KV: GLM-5's bf16 latent cache (89,856 B/token) plus its DSA indexer keys (78 layers × (128 FP8 + 4 B scale)
      = 10,296 B/token), 100,152 B/token in all (`hyperdecode inspect glm-5`);
    - prefill: 32,200 computed tok/s per 8-GPU node. DeepSeek's published H800 rate of 73,700 input tok/s counts
      the 56.3 % of tokens its prefix cache served (network.md §5), so 73,700 × (1 − 0.563) [derived] per token
      actually computed; `from_model` scales it by the active parameters (`prefill_rate`);
    - decode step: `decode_steps_s` (batch 1, 2, ...: from the latency model, `from_model(..., plan=...)`) on
      replicas of `plan_gpus` GPUs, else the affine 20 ms + 40 µs per running sequence [assumption];
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
    decode_steps_s: tuple[float, ...] = ()
    plan_gpus: int = 0  # GPUs of one decode replica the table is for (0: the affine model, per instance)

    @classmethod
    def from_model(cls, name: str = "glm-5", kv_dtype: str = "bf16", plan: DecodePlan | None = None,
                   max_batch: int = 128, **overrides: float) -> "ModelProfile":
        """The preset's KV bytes per token (the latent cache and, with DSA, the indexer keys that go with it), its
        MoE shape (no EP traffic for a dense model), its prefill rate (`prefill_rate`) and, with a `plan`, the
        decode step table up to `max_batch`."""
        from ...model.loader import preset_config
        from ...model.sizing import token_cache_bytes
        if kv_dtype not in ("bf16", "fp8"):
            raise ConfigError(f"kv_dtype must be 'bf16' or 'fp8', got {kv_dtype!r}")
        cfg = preset_config(name)
        kv = token_cache_bytes(cfg, 1 if kv_dtype == "fp8" else 2, "fp8")  # DSA indexer keys as deployed: FP8
        hidden = cfg.hidden_size
        moe = list(getattr(cfg, "mlp_layer_types", [])).count("sparse")
        shape = {"ep_bytes_per_copy": hidden + hidden // 128 * 4 + 2 * hidden, "moe_layers": moe,
                 "top_k": getattr(cfg, "num_experts_per_tok", 0) if moe else 0, "prefill_tok_s": prefill_rate(name)}
        if plan is not None:
            shape |= {"decode_steps_s": plan_step_table(name, plan, max_batch, kv_dtype), "plan_gpus": plan.gpus}
        return cls(kv_bytes_per_token=kv, **(shape | overrides))

    def prefill_s(self, tokens: int) -> float:
        return tokens / self.prefill_tok_s

    def step_s(self, batch: int) -> float:
        """One decode step's compute at `batch` running sequences (of one replica when the table is the plan's)."""
        if self.decode_steps_s:
            return self.decode_steps_s[min(max(batch, 1), len(self.decode_steps_s)) - 1]
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

    def ep_bytes_per_token(self, servers: int, prefill: bool) -> float:
        """Bytes one token sends to other servers over all MoE layers."""
        return self.moe_layers * self.ep_copies(servers, prefill) * self.ep_bytes_per_copy

    def check(self) -> None:
        for name in ("kv_bytes_per_token", "prefill_tok_s", "decode_step_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model profile field '{name}' must be positive")
        for name in ("decode_step_per_seq_s", "ep_bytes_per_copy", "moe_layers", "top_k"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"model profile field '{name}' must be >= 0")
        if not math.isfinite(self.prefill_tok_s):
            raise ConfigError("model profile field 'prefill_tok_s' must be finite")
        if any(not step > 0 for step in self.decode_steps_s):
            raise ConfigError("model profile field 'decode_steps_s' must hold positive step times")
