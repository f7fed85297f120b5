"""The backend seam: one registry of the runners a model can decode on (name -> a runner factory, where it runs,
what it needs, whether `auto` measures it), and of the parallel plans that split a model over ranks. Everything
that picks a runner asks here: `hd.LLM`, `auto` (autoselect.py), the CLI's checks. A parallel plan lives in
hyperdecode/parallel/ and registers itself (`register_plan`): it loads this rank's shard and gives rank 0's runner,
so the engine imports nothing of parallel/ and the model files know no plan (gpt-fast's `apply_tp(model)` shape).

>>> sorted(BACKENDS)
['graph', 'mega', 'native', 'reference']
>>> backend("native").devices
('cpu',)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["Backend", "BACKENDS", "NAMES", "backend", "check_backend", "make_runner", "Plan", "register_plan", "plan"]


@dataclass(frozen=True)
class Backend:
    """A way to run a model's steps, by its runner class (runner.py's interface: `build(model, **options)`, `check`,
    `supports`): `make(model, **options)` builds the runner (options: what `hd.LLM` knows of the checkpoint, e.g.
    `fp8`); `devices` are the device types it runs on; `needs()` raises a ConfigError naming what is missing here
    (Triton); `supports(model)` says whether it runs this model's family; `auto` whether `auto` measures it."""
    name: str
    module: str  # where its runner lives (imported on first use: a backend's dependencies load only when used)
    runner: str
    devices: tuple[str, ...]
    why_not: str  # the message's reason when the device is not one of `devices`
    auto: tuple[str, ...] = ()  # the device types on which `auto` measures it

    def runner_class(self) -> Any:
        return getattr(importlib.import_module(self.module), self.runner)

    def needs(self, flag: str = "backend") -> None:
        self.runner_class().check(flag)

    def supports(self, model: nn.Module) -> bool:
        return self.runner_class().supports(model)

    def make(self, model: nn.Module, **options: Any) -> Any:
        return self.runner_class().build(model, **options)


BACKENDS = {b.name: b for b in (
    Backend("reference", "hyperdecode.engine.runner", "ReferenceRunner", ("cpu", "cuda"), "", ("cpu", "cuda")),
    Backend("graph", "hyperdecode.engine.graph", "GraphRunner", ("cuda",),
            "captures CUDA graphs and needs a CUDA device", ("cuda",)),
    # on the CPU the megakernel runs in Triton's interpreter: for checking, never a candidate
    Backend("mega", "hyperdecode.engine.mega.runner", "MegaRunner", ("cuda", "cpu"), "", ("cuda",)),
    Backend("native", "hyperdecode.engine.native", "NativeRunner", ("cpu",),
            "compiles the decode step for the CPU", ("cpu",)),
)}
NAMES = (*BACKENDS, "auto")  # what `backend=` takes


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"backend '{name}' is not available (available: {', '.join(NAMES)})")
    return BACKENDS[name]


def check_backend(backend: str, device: torch.device, name: str = "backend") -> None:
    """Fails before the model loads when `backend` cannot run on `device` here; `name` is what messages call the
    backend (the CLI: --backend)."""
    if backend not in NAMES:
        raise ConfigError(f"{name} '{backend}' is not available (available: {', '.join(NAMES)})")
    if backend == "auto":
        return
    found = BACKENDS[backend]
    if device.type not in found.devices:
        other = "'reference'" if device.type == "cpu" else "'graph' or 'mega'"
        raise ConfigError(f"{name} '{backend}' {found.why_not} (device is '{device}'); use {name} {other} there")
    found.needs(name)


def make_runner(name: str, model: nn.Module, **options: Any) -> Any:
    return backend(name).make(model, **options)


@dataclass(frozen=True)
class Plan:
    """A parallel plan over the ranks torchrun started: `load(model, device, dtype, seed)` gives this rank's
    (config, local model, tokenizer); `runner(model)` this rank's runner (rank 0 leads, the others follow its
    steps); `rank()` this process's rank."""
    name: str
    load: Callable[[str, torch.device, torch.dtype, int], tuple[Any, nn.Module, Any]]
    runner: Callable[[nn.Module], Any]
    rank: Callable[[], int]


PLANS: dict[str, Plan] = {}
PLAN_MODULES = ("hyperdecode.parallel",)  # where plans register themselves when imported


def register_plan(found: Plan) -> None:
    PLANS[found.name] = found


def plan(name: str) -> Plan:
    """The registered plan `name` (its package is imported on first use, and registers its plans)."""
    if name not in PLANS:
        for module in PLAN_MODULES:
            importlib.import_module(module)
    if name not in PLANS:
        raise ConfigError(f"parallel plan '{name}' is not available (available: {', '.join(sorted(PLANS))})")
    return PLANS[name]
