"""Joining the ranks torchrun started, and each rank's shard of a model: `load_parallel` builds rank r's local
model under a plan (tp.py: plain tensor parallel; hetero.py: an indexer rank and attention ranks) from a preset or
a safetensors checkpoint, reading only the rows and columns it holds from the checkpoint's files (slices.py; block
FP8 included). A preset's random weights are drawn whole, then sliced.

Every collective has a bound (`TIMEOUT_S`): a rank that dies or hangs ends the others with torch.distributed's
error instead of a hang; torchrun then stops the job."""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from .hetero import assign_roles, hetero_config, hetero_tensors
from .peer import links
from .slices import safetensors_slices
from .tp import attach_all_reduce, local_config, shard_tensors

__all__ = ["join_ranks", "load_parallel", "build_rank", "PLANS", "TIMEOUT_S"]

PLANS = ("tp", "hetero")
TIMEOUT_S = 120


def join_ranks(device: torch.device) -> tuple[int, int]:
    """(rank, world) of this process: the process group torchrun's environment describes (NCCL on GPUs, gloo on
    the CPU), initialised on first use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError("a parallel plan runs one process per GPU under torch.distributed: launch it with "
                          "torchrun --nproc-per-node W -m hyperdecode ... (WORLD_SIZE is not set above 1)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return dist.get_rank(), dist.get_world_size()


def load_parallel(model: str, plan: str, device: torch.device, dtype: torch.dtype, seed: int) -> tuple[Any, nn.Module,
                                                                                                     Any]:
    """(full config, this rank's local model, tokenizer) under `plan`."""
    from ..model.loader import random_preset, read_json
    from ..model.presets import PRESETS
    from ..model.registry import config_from_dict
    from ..model.tokenizer import Tokenizer
    if plan not in PLANS:
        raise ConfigError(f"parallel plan '{plan}' is not available (available: {', '.join(PLANS)})")
    path = Path(model)
    if not (model in PRESETS and not PRESETS[model].embedded) and not path.is_dir():
        raise ConfigError(f"model '{model}': parallel plans take a random-weight preset or a safetensors checkpoint "
                          "directory")
    rank, world = join_ranks(device)
    if path.is_dir():
        cfg = config_from_dict(read_json(path / "config.json"), str(path / "config.json"))
        tok = Tokenizer.from_hf_dir(path, cfg.eos_token_ids, cfg.bos_token_id)
        get = safetensors_slices(path, getattr(cfg, "fp8_block", None) or (128, 128))
    else:
        cfg, sd, tok = random_preset(model, seed)
        get = sd.__getitem__
    cfg.num_nextn_predict_layers = 0  # the MTP layer is not split (yet): speculation by MTP stays single-process
    local_model = build_rank(cfg, get, plan, world, rank, device, dtype, f"{model} (rank {rank} of {world}, {plan})")
    return cfg, local_model, tok


def build_rank(cfg: Any, get: Callable[[str], Any], plan: str, world: int, rank: int, device: torch.device,
               dtype: torch.dtype, source: str) -> nn.Module:
    """Rank `rank`'s local model under `plan`, its tensors read through `get` (name -> a sliceable tensor), the
    all-reduces attached."""
    from ..model.loader import build
    # hetero_config refuses a model without a DSA indexer before any rank allocates anything
    local = local_config(cfg, world, rank) if plan == "tp" else hetero_config(cfg, world, rank)
    channel, reduce = links(cfg, device, dtype, hetero=plan == "hetero")
    if plan == "tp":
        model = build(local, shard_tensors(cfg, get, world, rank), source, device, dtype)
    else:
        model = build(local, hetero_tensors(cfg, get, world, rank), source, device, dtype,
                      adapt=lambda m: assign_roles(m, rank, channel))
    attach_all_reduce(model, reduce)
    return model
