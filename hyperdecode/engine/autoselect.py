"""`backend="auto"`: the fastest backend for this model on this machine — on a GPU `reference`, `graph` or `mega`,
on the CPU `reference` or `native` — measured once (a few batch-1 decode steps each, after a warm-up that includes the
megakernel's JIT compile or the native step's build) and remembered in the project's cache (`backend_choice.json`,
keyed by the GPU or the CPU and its thread count, model shape, dtype and the package version), so that `auto`
never picks the slower one and pays the measurement only on first use.

>>> choose({"graph": lambda: 2e-3, "mega": lambda: 1e-3}, timer=lambda make: make())  # makers time themselves here
('mega', {'graph': 0.002, 'mega': 0.001})
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = ["fastest", "choose", "time_decode", "cached_choice", "choice_key", "CpuWeights", "DEQUANTIZED"]

DEQUANTIZED = "dequantized"  # a candidate "<backend>:dequantized" runs over the fp32 copy of kept-quantized weights


@torch.inference_mode()
def time_decode(runner, steps: int = 8, warm: int = 3) -> float:
    """Seconds per batch-1 decode step of a runner (random tokens, positions from 0; weights only matter here)."""
    device = runner.device
    runner.setup(1, warm + steps + 2)
    want = torch.ones(1, 1, dtype=torch.bool, device=device)
    tok = torch.ones(1, 1, dtype=torch.long, device=device)
    for i in range(warm + steps):
        if i == warm:
            sync(device)
            start = time.perf_counter()
        logits = runner.forward(tok, torch.full((1, 1), i, device=device), None, want)
        runner.confirm()
        tok = logits.argmax(-1)[:, None]
    sync(device)
    return (time.perf_counter() - start) / steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose(makers: dict[str, Callable[[], object]], timer: Callable | None = None) -> tuple[str, dict[str, float]]:
    """The fastest backend by name, and every candidate's seconds per step (a candidate that fails is skipped)."""
    timer = timer or (lambda make: time_decode(make()))
    timings = {}
    for name, make in makers.items():
        try:
            timings[name] = timer(make)
        except Exception:  # a backend that cannot run here is simply not a candidate
            continue
    if not timings:
        raise RuntimeError("backend 'auto': no fast backend ran on this device")
    return min(timings, key=timings.get), timings


def choice_key(model: nn.Module, device: torch.device) -> str:
    """What the choice depends on: the GPU (or the CPU, its kernels' vector path and its threads), the model's shape,
    dtype and weight forms, and this package's version (`hyperdecode.__version__`: a tree run from its folder has no
    installed metadata)."""
    from .. import __version__
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        from ..errors import ConfigError
        from ..model.quant import cpu_model, kernel_isa
        try:
            isa = kernel_isa()
        except ConfigError:  # no C compiler: only the reference runs here
            isa = "none"
        machine = f"{cpu_model()}|{isa}|{torch.get_num_threads()} threads"
    shape = json.dumps({k: v for k, v in sorted(vars(model.cfg).items()) if isinstance(v, (int, float, str, bool))})
    leaves = sorted({f"{type(m).__name__}{getattr(m, 'kind', '')}{getattr(m, 'activations', '')}"
                     for m in model.modules() if not list(m.children())})
    text = f"{machine}|{model.embed_tokens.weight.dtype}|{leaves}|{__version__}|{shape}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class CpuWeights:
    """The two forms `auto` measures a CPU model's kept-quantized weights in: as loaded (the blocks) and dequantized
    to fp32 (BLAS, or the native step's fp32 loop). A maker wrapped by `as_loaded` / `dequantized` puts the model's
    weights in that form before it builds its runner; `keep` leaves them in the chosen one."""

    def __init__(self, model: nn.Module):
        from ..model.quant import QuantLinear
        self.model = model
        self.quantized = any(isinstance(m, QuantLinear) for m in model.modules())
        self.replaced: list = []  # what dequantize_model swapped out, while the fp32 form is in place

    def as_loaded(self, make: Callable[[], object]) -> Callable[[], object]:
        return lambda: self._then(False, make)

    def dequantized(self, make: Callable[[], object]) -> Callable[[], object]:
        return lambda: self._then(True, make)

    def keep(self, dequantized: bool) -> None:
        self._set(dequantized)
        self.replaced = []  # the blocks are no longer needed (or were never swapped out)

    def _then(self, dequantized: bool, make: Callable[[], object]) -> object:
        self._set(dequantized)
        return make()

    def _set(self, dequantized: bool) -> None:
        from ..model.quant import dequantize_model, restore
        if dequantized and not self.replaced:
            self.replaced = dequantize_model(self.model)
        elif not dequantized and self.replaced:
            restore(self.replaced)
            self.replaced = []


def cached_choice(path: Path, key: str, makers: dict[str, Callable[[], object]]) -> str:
    """The remembered choice for `key` in the JSON file at `path`, or a fresh measurement, stored there."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known and known[key].get("choice") in makers:
        return known[key]["choice"]
    best, timings = choose(makers)
    known[key] = dict(choice=best, seconds_per_step=timings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=1))
    return best


def choice_file() -> Path:
    """Where the measured choices are kept: backend_choice.json in the project's cache."""
    from ..model.embedded import cache_dir
    return cache_dir() / "backend_choice.json"


def fastest(model: nn.Module, options: dict, may_dequantize: bool) -> str:
    """`auto`: the fastest backend for this model here, measured once (batch-1 decode steps) and cached: every
    registered backend that runs on the model's device, supports its family and whose needs are met (backends.py;
    one that fails to run is not a candidate, so the reference always remains); on the CPU each over the weights as
    loaded and, where they are kept quantized and `may_dequantize` (quantize "auto", fp32 activations), over their
    dequantized fp32 copy too (so a CPU whose quantized kernel is slow still gets BLAS's speed). `options` go to the
    runners (backends.make_runner)."""
    from ..errors import ConfigError
    from .backends import BACKENDS
    device = model.device
    makers = {}
    for name, found in BACKENDS.items():
        if device.type not in found.auto or not found.supports(model):
            continue
        try:
            found.needs()
        except ConfigError:
            continue
        makers[name] = lambda found=found: found.make(model, **options)
    if len(makers) == 1:
        return next(iter(makers))
    weights = CpuWeights(model)
    if device.type == "cpu" and weights.quantized and may_dequantize:
        makers = {**{name: weights.as_loaded(make) for name, make in makers.items()},
                  **{f"{name}:{DEQUANTIZED}": weights.dequantized(make) for name, make in makers.items()}}
    choice = cached_choice(choice_file(), choice_key(model, device), makers)
    backend, _, form = choice.partition(":")
    weights.keep(form == DEQUANTIZED)
    return backend
