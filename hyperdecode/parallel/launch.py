"""Joining the ranks torchrun started, and each rank's shard of a model: `load_parallel` builds rank r's local
model (tp.py) from a preset or a safetensors checkpoint, reading only the rows and columns it holds from the
checkpoint's files (safetensors slices). A preset's random weights are drawn whole, then sliced.

Every collective has a bound (`TIMEOUT_S`): a rank that dies or hangs ends the others with torch.distributed's
error instead of a hang; torchrun then stops the job."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .tp import attach_all_reduce, local_config, shard_tensors

__all__ = ["join_ranks", "load_parallel", "PLANS", "TIMEOUT_S"]

PLANS = ("tp",)
TIMEOUT_S = 120


def join_ranks(device: torch.device) -> tuple[int, int]:
    """(rank, world) of this process: the process group torchrun's environment describes (NCCL on GPUs, gloo on
    the CPU), initialised on first use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError("parallel='tp' runs one process per GPU under torch.distributed: launch it with "
                          "torchrun --nproc-per-node W -m hyperdecode ... (WORLD_SIZE is not set above 1)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return dist.get_rank(), dist.get_world_size()


def safetensors_slices(path: Path) -> Callable[[str], Any]:
    """name (HF, without "model.") -> a safetensors slice of it, read lazily from whichever file holds it."""
    from safetensors import safe_open
    index = path / "model.safetensors.index.json"
    files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.exists() \
        else [path / "model.safetensors"]
    where = {}
    handles = [safe_open(str(f), framework="pt") for f in files]
    for handle in handles:
        for key in handle.keys():
            where[key.removeprefix("model.")] = (handle, key)
    float8 = [k for k, (h, key) in where.items() if h.get_slice(key).get_dtype().startswith("F8")]
    if float8:
        raise ConfigError(f"{path}: FP8 checkpoints are not sliced per rank yet ({float8[0]}); use one process")

    def get(name: str) -> Any:
        if name not in where:
            raise ConfigError(f"{path}: tensor '{name}' is missing")
        handle, key = where[name]
        return handle.get_slice(key)
    return get


def load_parallel(model: str, plan: str, device: torch.device, dtype: torch.dtype, seed: int) -> tuple[Any, nn.Module,
                                                                                                     Any]:
    """(full config, this rank's local model, tokenizer) under `plan`."""
    from ..model.loader import build, random_preset, read_json
    from ..model.presets import PRESETS
    from ..model.registry import config_from_dict
    from ..model.tokenizer import Tokenizer
    if plan not in PLANS:
        raise ConfigError(f"parallel plan '{plan}' is not available (available: {', '.join(PLANS)})")
    rank, world = join_ranks(device)
    path = Path(model)
    if model in PRESETS and not PRESETS[model].embedded:
        cfg, sd, tok = random_preset(model, seed)
        get = sd.__getitem__
    elif path.is_dir():
        cfg = config_from_dict(read_json(path / "config.json"), str(path / "config.json"))
        tok = Tokenizer.from_hf_dir(path, cfg.eos_token_ids, cfg.bos_token_id)
        get = safetensors_slices(path)
    else:
        raise ConfigError(f"model '{model}': parallel plans take a random-weight preset or a safetensors checkpoint "
                          "directory")
    cfg.num_nextn_predict_layers = 0  # the MTP layer is not split (yet): speculation by MTP stays single-process
    local = local_config(cfg, world, rank)
    local_model = build(local, shard_tensors(cfg, get, world, rank), f"{model} (rank {rank} of {world})", device,
                        dtype)
    attach_all_reduce(local_model)
    return cfg, local_model, tok
