"""One table of the machines the models and benchmarks reason about: each GPU's datasheet memory bandwidth, the copy
bandwidth measured on it, its SMs and links, and the constants of the two latency models that read it (the
megakernel's schedule model, engine/mega/schedule.py; the multi-GPU plan, parallel/latency.py), plus the CPU this
project's tests run on. `schedule`, `plan`, `inspect` and the GPU benchmark take their figures from here; a device's
row is chosen by the name torch reports for it.

>>> for_device("NVIDIA H100 80GB HBM3").hbm_tbps, for_device("NVIDIA H200").hbm_tbps
(3.35, 4.8)
>>> machine("b200").nvlink_gbps
900.0
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["Machine", "TABLE", "machine", "for_device", "GPUS"]


@dataclass(frozen=True)
class Machine:
    """One machine's row. The first block is measured or from a datasheet; the rest are the models' assumptions
    (editable per run: `plan --hw-file` takes a JSON object of these fields per name)."""
    name: str
    hbm_tbps: float  # memory bandwidth, datasheet
    copy_tbps: float  # a device-to-device copy measured on one (bytes read + written per second): MBU's denominator
    sms: int  # streaming multiprocessors: the megakernel's workers (0 for the CPU)
    nvlink_gbps: float  # per GPU, one direction
    device_names: tuple[str, ...] = ()  # what torch.cuda.get_device_name reports begins with one of these
    # parallel/latency.py: the multi-GPU plan's latency model
    hbm_efficiency: float = 0.80  # the fraction a streaming kernel reaches (the best single-GPU megakernels: ~0.78-0.80)
    hop_us: float = 5.63  # one dependent cross-GPU exchange: a one-sided write, its flag seen by the peer
    stage_us: float = 1.4  # one dependent intra-GPU stage: a grid-wide signal seen plus the first bytes' latency
    select_fixed_us: float = 13.7  # one layer's top-k selection, whatever the context (its passes and their syncs)
    select_gpos_s: float = 20.8  # and its rate per scored position: billions of positions per second per GPU
    launch_us: float = 10.0  # per step: the host's launch and the sampled token's read-back
    # engine/mega/schedule.py: the megakernel's schedule model
    signal_s: float = 0.70e-6  # a release signal seen by a waiting program
    first_chunk_s: float = 0.70e-6  # an instruction's first weight chunk from HBM (the pipeline fill)
    instruction_s: float = 0.15e-6  # per instruction: table row, dispatch, the barrier before the release
    kernel_launch_s: float = 6e-6  # the cooperative launch and the counters' reset

    @property
    def stream_bps(self) -> float:
        """Bytes per second a streaming kernel reaches (the plan's rate): datasheet x efficiency."""
        return self.hbm_tbps * 1e12 * self.hbm_efficiency


# Datasheets: NVIDIA's H100 SXM (80 GB HBM3, 3.35 TB/s), H200 (141 GB HBM3e, 4.8 TB/s) and B200 (8 TB/s); NVLink 4:
# 900 GB/s, NVLink 5: 1.8 TB/s, both directions. Copy bandwidth: measured on this workplace's machines (the device
# tool's KINDS.md: H100 ~3.0 TB/s, H200 4.1-4.3 TB/s; the H200 probes in ../shared/reference/engine-anchors.md:
# 4.24); no B200 was measured here, so its figure is the H200's ratio (0.88) times the datasheet. The latency-model
# constants were calibrated on TileRT's published GLM-5.1 8 x B200 figures (bench/plan_tilert.py) and taken over for
# Hopper unchanged; the schedule model's, on the H200 probes. The CPU row is this project's 2-core dev machine
# (bench/NOTES.md: ~60 GB/s read with 2 threads, ~30 GB/s copy).
TABLE = {
    "h100": Machine("h100", 3.35, 3.0, 132, 450.0, ("NVIDIA H100",)),
    "h200": Machine("h200", 4.8, 4.24, 132, 450.0, ("NVIDIA H200",)),
    "b200": Machine("b200", 8.0, 7.04, 148, 900.0, ("NVIDIA B200",)),
    "cpu": Machine("cpu", 0.06, 0.03, 0, 0.0),
}
GPUS = tuple(name for name, row in TABLE.items() if row.sms)


def machine(name: str) -> Machine:
    """The table's row `name` ("h100", "h200", "b200", "cpu")."""
    if name not in TABLE:
        raise ConfigError(f"hardware '{name}' is not in the table (known: {', '.join(TABLE)})")
    return TABLE[name]


def for_device(device_name: str) -> Machine:
    """The row of the GPU torch names `device_name` (e.g. "NVIDIA H100 80GB HBM3"); "cpu" for the CPU."""
    if device_name.lower() == "cpu":
        return TABLE["cpu"]
    for row in TABLE.values():
        if any(device_name.startswith(prefix) for prefix in row.device_names):
            return row
    raise ConfigError(f"no hardware row for the device '{device_name}' (known: "
                      f"{', '.join(n for row in TABLE.values() for n in row.device_names)}); add one to "
                      "hyperdecode/hardware.py")
