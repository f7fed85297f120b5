"""GPU first contact: the whole device run, phase by phase in order of value, each phase in a process of its own with
its own deadline, so that a hang, a crash or a CUDA context poisoned by a device fault costs that phase alone and
the next one still runs. Every result is one JSON line appended (flushed, synced) to $OUT/results.jsonl the moment
it exists (bench/decode_gpu.py writes the rows, this driver one status line per phase); a total budget bounds the
run, a phase is skipped when less is left than it needs, and a summary table of whatever finished is printed last.

Phases: env (GPU, SMs, L2, versions, measured copy and read-only bandwidth, the hardware table's row);
llama-1b (Llama-3.2-1B's shape, batch 1: `mega` against the fp32 reference on the same bf16 weights, the kernel
alone with CUDA events, `graph` and `reference` beside it, tok/s, MBU against the measured and the datasheet
bandwidth, the schedule model's prediction at the measured bandwidth); medium-glm5 (batch 1); variants (prefetch
off, pipeline stages, warps, k-chunk, tile); batch8; long (4K positions); compile (torch.compile); transformers. When
`mega` fails in llama-1b (an error, a timeout, or logits off the fp32 reference), the rest of the budget goes to
diagnosis instead: the variants with a short spin limit, one worker, a tiny spin limit, and compute-sanitizer over
one tiny-llama step.

    PYTHONPATH=. python3 bench/gpu_phases.py --out $OUT --budget-s 540      # on the device
    python bench/gpu_phases.py --dry-run --out /tmp/phases                   # on the CPU: tiny presets, interpreter
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIRST_SPIN = 200_000  # polls before a first run's dependency wait gives up: a wrong barrier fails in well under a second


@dataclass
class Phase:
    name: str
    argv: list[str]  # the child's command line
    need_s: float  # the least budget worth starting it with
    deadline_s: float  # its own limit (never more than the budget left)
    env: dict[str, str] = field(default_factory=dict)
    rows: bool = True  # the child is bench/decode_gpu.py: it is told where its rows go


def decode_phase(name: str, args: list[str], need_s: float, deadline_s: float, dry_run: bool) -> Phase:
    """A phase that runs bench/decode_gpu.py with `args` (plus the smoke flags in a dry run)."""
    smoke = ["--smoke", "--steps", "2", "--warm", "1", "--prompt", "8"] if dry_run else []
    return Phase(name, [sys.executable, str(HERE / "decode_gpu.py"), *smoke, *args], need_s, deadline_s)


def phases(dry_run: bool) -> list[Phase]:
    """The run in order of value; a dry run swaps in tiny presets (tiny-llama, tiny-glm5) and short contexts."""
    llama, glm = ("tiny-llama", "tiny-glm5") if dry_run else ("llama-3.2-1b", "medium-glm5")
    variants = ("16x128x4x1,16x128x4x1x2p" if dry_run else
                "16x256x4x1,16x256x4x1x2p,16x256x8x1p,16x128x4x1p,32x256x4x1p")
    long = "48" if dry_run else "4096"
    spin = ["--max-spin", str(FIRST_SPIN)]
    short = ["--long", "none", "--mega-configs", "none"]
    return [
        decode_phase("env", ["--env"], 20, 90, dry_run),
        decode_phase("llama-1b", ["--models", llama, "--batches", "1", "--backends", "reference,graph,mega",
                                  *short, *spin], 150, 300, dry_run),
        decode_phase("medium-glm5", ["--models", glm, "--batches", "1", "--backends", "reference,graph,mega",
                                     *short, *spin], 120, 240, dry_run),
        decode_phase("variants", ["--models", llama, "--batches", "1", "--backends", "mega", "--long", "none",
                                  "--mega-configs", variants, *spin], 120, 240, dry_run),
        decode_phase("batch8", ["--models", llama, "--batches", "2" if dry_run else "8", "--backends",
                                "reference,graph,mega", *short, *spin], 100, 200, dry_run),
        decode_phase("long", ["--models", llama, "--batches", "1", "--backends", "graph,mega", "--long", long,
                              "--long-only", "--mega-configs", "none", *spin], 90, 180, dry_run),
        decode_phase("compile", ["--models", llama, "--batches", "1", "--backends", "reference,compile", *short],
                     120, 300, dry_run),
        decode_phase("transformers", ["--models", llama, "--batches", "1", "--backends", "reference,transformers",
                                      *short], 60, 180, dry_run),
    ]


def diagnosis(dry_run: bool) -> list[Phase]:
    """What the budget goes to when `mega` failed on first contact."""
    llama = "tiny-llama" if dry_run else "llama-3.2-1b"
    variants = "16x128x4x1,16x128x4x1x2p" if dry_run else "16x256x4x1,16x256x4x1x1,16x256x8x1,32x256x4x1"
    base = ["--models", llama, "--batches", "1", "--backends", "mega", "--long", "none"]
    sanitized = [sys.executable, str(HERE / "decode_gpu.py"), "--models", "tiny-llama", "--batches", "1",
                 "--backends", "mega", "--long", "none", "--mega-configs", "none", "--steps", "1", "--warm", "1",
                 "--prompt", "8", "--max-spin", "100000"]
    if dry_run:
        sanitized.insert(2, "--smoke")
    tool = shutil.which("compute-sanitizer")
    return [
        decode_phase("diag-variants", [*base, "--mega-configs", variants, "--max-spin", "100000"], 90, 180, dry_run),
        decode_phase("diag-one-worker", [*base, "--mega-configs", "none", "--workers", "1", "--max-spin", "100000"],
                     60, 150, dry_run),
        decode_phase("diag-small-spin", [*base, "--mega-configs", "none", "--max-spin", "1000"], 60, 120, dry_run),
        Phase("sanitizer", ([tool, "--tool", "memcheck", "--error-exitcode", "3", *sanitized] if tool and not dry_run
                            else sanitized), 60, 240),
    ]


def record(out: Path, line: dict) -> None:
    """Appends one JSON line to $OUT/results.jsonl, flushed and synced."""
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_phase(phase: Phase, out: Path, limit_s: float) -> dict:
    """Runs one phase's process (its own session: a timeout kills its whole group) with its output in
    $OUT/<phase>.log; returns its status line."""
    start = time.monotonic()
    env = {**os.environ, **phase.env}
    status = dict(phase_status=phase.name, deadline_s=round(limit_s, 1))
    argv = phase.argv + (["--out", str(out), "--jsonl", str(out / "results.jsonl"), "--phase", phase.name]
                         if phase.rows else [])
    with open(out / f"{phase.name}.log", "w") as log:
        try:
            child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        except OSError as e:
            return {**status, "status": "failed", "detail": f"could not start: {e}", "wall_s": 0.0}
        try:
            rc = child.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            stop(child)
            return {**status, "status": "timeout", "wall_s": round(time.monotonic() - start, 1),
                    "detail": f"still running after {limit_s:.0f} s: killed"}
    wall = round(time.monotonic() - start, 1)
    if rc < 0:
        return {**status, "status": "crashed", "rc": rc, "wall_s": wall,
                "detail": f"killed by signal {signal.Signals(-rc).name}"}
    if rc:
        return {**status, "status": "failed", "rc": rc, "wall_s": wall, "detail": tail(out / f"{phase.name}.log")}
    return {**status, "status": "ok", "rc": 0, "wall_s": wall}


def stop(child: subprocess.Popen) -> None:
    """SIGTERM to the phase's process group, SIGKILL 5 s later if anything is left."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, chars: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def results(out: Path) -> list[dict]:
    """Every JSON line written so far (a torn last line, from a killed writer, is left out)."""
    found = []
    try:
        lines = (out / "results.jsonl").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def mega_failed(out: Path, phase: str) -> bool:
    """Whether `phase` ended badly or any of its `mega` rows erred or missed the fp32 reference."""
    lines = [r for r in results(out) if r.get("phase") == phase or r.get("phase_status") == phase]
    ended = [r for r in lines if "phase_status" in r]
    if not ended or ended[-1]["status"] != "ok":
        return True
    mega = [r for r in lines if str(r.get("backend", "")).startswith("mega")]
    return not mega or any("error" in r or r.get("exact_ok") is False or r.get("ok") is False for r in mega)


def run_phases(plan: list[Phase], out: Path, budget_s: float, fallback: list[Phase] | None = None,
               watch: str = "llama-1b") -> list[dict]:
    """Runs `plan` in order within `budget_s`; after `watch`, if its megakernel failed, the rest of the plan is
    replaced by `fallback`. Returns the phases' status lines (also appended to results.jsonl)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    statuses, queue = [], list(plan)
    while queue:
        phase = queue.pop(0)
        left = budget_s - (time.monotonic() - start)
        if left < phase.need_s:
            status = dict(phase_status=phase.name, status="skipped", wall_s=0.0,
                          detail=f"{left:.0f} s of budget left, it needs {phase.need_s:.0f}")
        else:
            status = run_phase(phase, out, min(phase.deadline_s, left))
        record(out, status)
        statuses.append(status)
        print(f"[phase {phase.name}] {status['status']} in {status['wall_s']} s {status.get('detail', '')}"[:300],
              flush=True)
        if phase.name == watch and fallback is not None and mega_failed(out, watch):
            print(f"[phases] the megakernel failed in {watch}: the rest of the budget goes to diagnosis", flush=True)
            queue = list(fallback)
    return statuses


def summary(out: Path) -> str:
    """The table printed last: each phase's status line, then its rows' headline figures."""
    found = results(out)
    names = list(dict.fromkeys(r.get("phase_status") or r.get("phase") for r in found))
    lines = []
    for name in names:
        for r in (r for r in found if r.get("phase_status") == name):
            lines.append(f"{name:<16} {r['status']:<8} {r['wall_s']:>7.1f} s  {r.get('detail', '')}"[:160])
        lines += [row_line(r) for r in found if r.get("phase") == name]
    return "\n".join(lines)


def row_line(r: dict) -> str:
    """One result row in a line."""
    if r.get("phase_kind") == "env":
        return (f"  env: {r.get('gpu')} (table row {r.get('table_row')}, datasheet {r.get('datasheet_tbps')} TB/s), "
                f"{r.get('sms')} SMs, copy {r['copy_gbs']:.0f} GB/s, read {r['read_gbs']:.0f} GB/s, torch "
                f"{r['torch']}, triton {r['triton']}")
    head = f"  {r.get('model', '?'):<13} {r.get('backend', '?'):<24} B={r.get('batch', '?'):<2}"
    if "tok_s" not in r:
        return f"{head} ERROR {r.get('error', 'no figures')}"[:200]
    exact = "" if "exact_ok" not in r else \
        f" fp32-ref {r['exact_rel_err']:.1e} {'exact' if r['exact_ok'] else 'NOT EXACT'}"
    return (f"{head} ctx={r['context']:<6} {r['tok_s']:9.1f} tok/s {r['ms_per_step']:8.3f} ms MBU "
            f"{100 * r['mbu']:5.1f}% (datasheet {100 * r['mbu_datasheet']:5.1f}%)"
            + (f" kernel {r['kernel_ms']:.3f} ms" if "kernel_ms" in r else "")
            + (f" model {r['predicted_tok_s']:.0f} tok/s" if "predicted_tok_s" in r else "") + exact)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="where results.jsonl and the logs go ($OUT)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="the whole run's limit in seconds")
    ap.add_argument("--dry-run", action="store_true", help="every phase on the CPU: tiny presets, the interpreter")
    ap.add_argument("--diagnose", action="store_true", help="run the diagnosis phases after the plan, whatever happens")
    ap.add_argument("--phases", default=None, help="comma-separated phase names to run (default: all, in order)")
    a = ap.parse_args()
    out = Path(a.out)
    plan = phases(a.dry_run)
    if a.phases:
        wanted = a.phases.split(",")
        plan = [p for p in plan + diagnosis(a.dry_run) if p.name in wanted]
    if a.diagnose:
        plan += diagnosis(a.dry_run)
    run_phases(plan, out, a.budget_s, None if a.diagnose or a.phases else diagnosis(a.dry_run))
    print("\n" + summary(out))


if __name__ == "__main__":
    main()
