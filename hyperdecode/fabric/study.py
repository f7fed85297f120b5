"""The ZCube-vs-ROFT study: the calibrated point's runs on each topology at each NIC speed and load, and, with
`sensitivity`, the sensitivity table's runs; the rows are read by comparison.py (the NIC ablation against Z.ai's,
the claims' verdicts) and written up by studyreport.py. Runs go to worker processes with `jobs` > 1.
"""
from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .flow.config import SimConfig
from .flow.model import ModelProfile
from .flow.summary import link_util_p99, summarize
from .flow.workload import Workload
from .sensitivity import VARIANTS, sensitivity_rows, variant_runs
from .setups import build, study_topologies
from .studyreport import write_report
from .topology.graph import Topology
from .topology.optics import optics_counts

__all__ = ["Study", "run_study", "run_job"]

@dataclass
class Study:
    """What a study runs: the cluster, NIC speeds, traffic kinds, loads, workload, model and configuration."""
    gpus: int
    switch_tbps: float
    nics: list[int]
    traffics: list[str]
    loads: list[float]
    work: Workload
    model: ModelProfile
    cfg: SimConfig
    pfc_window_s: float | None = None
    pfc_windows: int = 2
    dcqcn: bool = False
    sensitivity: bool = False
    jobs: int = 1
    command: str = "fabric study"
    metric: str = "steady_tok_s"  # the throughput the claims use: tokens made while the load is offered
    extra: dict = field(default_factory=dict)


def run_job(job: dict) -> dict[str, Any]:
    """One serving run (with PFC feedback when asked): its summary and what the plots need."""
    from .coupled import run_with_pfc
    from .flow.serving import simulate
    if job["pfc_window_s"]:
        run, summary = run_with_pfc(job["topology"], job["work"], job["model"], job["cfg"], job["pfc_window_s"],
                                    job["pfc_windows"], dcqcn=job["dcqcn"], processes=job["processes"])
    else:
        run = simulate(job["topology"], job["work"], job["model"], job["cfg"])
        summary = summarize(run)
    topo = run.topology
    fabric = [k for k in range(2 * topo.num_links) if topo.link_port[k // 2] < 0]
    summary["plot"] = {"ttft_s": run.ttft_s[run.completed].tolist(),
                       "fabric_util_p99": link_util_p99(run.util_seconds)[fabric].tolist()}
    return summary


def _load(study: Study, load: float) -> tuple[Workload, SimConfig]:
    if study.cfg.sessions:
        return study.work, dataclasses.replace(study.cfg, sessions=max(int(round(study.cfg.sessions * load)), 1))
    return (study.work.scaled(load) if load != 1 else study.work), study.cfg


def _jobs(study: Study) -> tuple[list[dict], dict[tuple, int]]:
    """Every run: the comparison's (topology, NIC, traffic, load) and the sensitivity rows' (deduplicated)."""
    fastest = max(study.nics)
    jobs, index = [], {}

    def add(key: tuple, topo: Topology, work: Workload, cfg: SimConfig, meta: dict) -> None:
        if key in index:
            return
        index[key] = len(jobs)
        jobs.append({"topology": topo, "work": work, "model": study.model, "cfg": cfg, "meta": meta,
                     "pfc_window_s": study.pfc_window_s, "pfc_windows": study.pfc_windows, "dcqcn": study.dcqcn,
                     "processes": 1 if study.jobs > 1 else None})
    for nic in study.nics:
        topologies = study_topologies(study.gpus, study.switch_tbps, nic, fastest)
        for traffic in study.traffics:
            for load in study.loads:
                work, cfg = _load(study, load)
                cfg = dataclasses.replace(cfg, traffic=traffic)
                for name, topo in topologies.items():
                    meta = {"name": name, "nic_gbps": nic, "traffic": traffic, "rate_scale": load}
                    add((name, nic, ()) if traffic == study.traffics[0] and load == study.loads[0] else
                        (name, nic, traffic, load), topo, work, cfg, meta)
    if study.sensitivity:
        work, cfg = _load(study, study.loads[0])
        cfg = dataclasses.replace(cfg, traffic=study.traffics[0])
        for v in VARIANTS:
            for key in variant_runs(v, fastest):
                name, nic, changes = key
                topo = build(name, study.gpus, study.switch_tbps, nic, fastest)
                add(key, topo, work, dataclasses.replace(cfg, **dict(changes)),
                    {"name": name, "nic_gbps": nic, "traffic": cfg.traffic, "rate_scale": study.loads[0],
                     "changes": dict(changes)})
    return jobs, index


def run_study(study: Study, out: Path, progress: Callable[[str], None] | None = None) -> str:
    """Runs every job, writes the report (studyreport.write_report) and returns its text."""
    jobs, index = _jobs(study)
    if progress:
        progress(f"{len(jobs)} runs on {study.gpus} GPUs ({study.jobs} at a time)")
    if study.jobs > 1:
        with ProcessPoolExecutor(study.jobs) as pool:
            summaries = list(pool.map(run_job, jobs))
    else:
        summaries = []
        for job in jobs:
            if progress:
                progress(json.dumps(job["meta"]))
            summaries.append(run_job(job))
    rows = [job["meta"] | {"variant": f"{job['meta']['nic_gbps']}G {job['meta']['traffic']}"} | s
            for job, s in zip(jobs, summaries)]
    fastest = max(study.nics)
    counts = {}
    for name in ("zcube", "roft", "roft-3-tier"):
        topo = build(name, study.gpus, study.switch_tbps, fastest)
        for reach in (0, 4):
            o = optics_counts(topo, reach)
            for convention in ("per_link", "switch_modules"):
                counts[(name, convention, reach)] = {"switches": topo.num_switches, "optics": o[convention]}
    sensitivity = []
    if study.sensitivity:
        by_key = {key: rows[i] for key, i in index.items()}
        sensitivity = sensitivity_rows(by_key, counts, fastest, study.metric)
    comparison = [r for r, job in zip(rows, jobs) if "changes" not in job["meta"]]
    return write_report(out, study, comparison, sensitivity, counts)
