"""Parallel plans over torch.distributed: plain tensor parallel (tp.py), the indexer-rank plan (hetero.py), their
launch under torchrun (launch.py, follow.py), one-sided GPU links (peer.py), checkpoint slices (slices.py), and the
multi-GPU decode latency model (latency.py, report.py)."""

from ..engine.backends import Plan, register_plan


def _plan(name: str) -> Plan:
    """Plan `name` (tp.py, hetero.py) as the engine's seam sees it: this rank's shard, rank 0 leads."""
    import torch.distributed as dist

    from .follow import LeaderRunner
    from .launch import load_parallel
    from ..engine.runner import ReferenceRunner

    def runner(model):
        return LeaderRunner(model) if dist.get_rank() == 0 else ReferenceRunner(model)

    return Plan(name, lambda model, device, dtype, seed: load_parallel(model, name, device, dtype, seed), runner,
                dist.get_rank)


for _name in ("tp", "hetero"):
    register_plan(_plan(_name))
