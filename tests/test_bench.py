"""The GPU benchmark script, run in its CPU smoke mode so that it cannot rot between device sessions."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


HIDE_METADATA = """
import importlib.metadata as metadata
_version, _distribution = metadata.version, metadata.distribution
def _hidden(name, real):
    def look(dist):
        if str(dist).lower() == "hyperdecode":
            raise metadata.PackageNotFoundError(dist)
        return real(dist)
    return look
metadata.version = _hidden("version", _version)
metadata.distribution = _hidden("distribution", _distribution)
"""


def bare_copy(tmp_path):
    """The tree as the device gets it: hyperdecode/ and bench/ copied, run with PYTHONPATH only, and a
    sitecustomize that makes importlib.metadata know no `hyperdecode` (the device never installs it)."""
    import shutil
    tree = tmp_path / "tree"
    for part in ("hyperdecode", "bench"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_METADATA)
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{site}", "PYTHONWARNINGS": "ignore"}
    return tree, env


def test_the_device_run_dry_runs_every_phase_from_a_copy_that_is_not_installed(tmp_path):
    """bench/gpu_phases.py --dry-run (tiny presets, the megakernel in Triton's interpreter) from a bare copy: every
    phase, the diagnosis ones too, ends ok and leaves its JSON lines; the rows came from the copy's package."""
    tree, env = bare_copy(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "bench/gpu_phases.py", "--dry-run", "--diagnose", "--out", str(out), "--budget-s", "900"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tree)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    statuses = {r["phase_status"]: r["status"] for r in lines if "phase_status" in r}
    assert list(statuses) == ["env", "llama-1b", "medium-glm5", "variants", "batch8", "long", "compile",
                              "transformers", "diag-variants", "diag-one-worker", "diag-small-spin", "sanitizer"]
    assert set(statuses.values()) == {"ok"}, statuses
    rows = [r for r in lines if "phase" in r]
    env_row = next(r for r in rows if r.get("phase_kind") == "env")
    assert env_row["hyperdecode_from"] == str(tree / "hyperdecode") and env_row["table_row"] == "cpu"
    for phase in statuses:
        if phase == "env":
            continue
        mine = [r for r in rows if r["phase"] == phase]
        assert mine and all("error" not in r and r["tok_s"] > 0 and 0 < r["mbu"] < 1 for r in mine), phase
        for r in mine:
            if r["backend"].startswith("mega") and r["context"] < 48:
                assert r["exact_ok"] and r["ok"] and 0 < r["predicted_mbu"] < 1, r
    assert {r.get("backend") for r in rows} >= {"reference", "graph", "mega", "compile", "transformers",
                                           "mega[16x128x4x1x2p]"}
    assert "llama-1b" in done.stdout.split("\n\n")[-1]  # the summary table, last


def test_a_phase_that_hangs_or_kills_itself_is_reported_and_the_next_one_runs(tmp_path):
    import importlib
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        phases = importlib.import_module("gpu_phases")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    py = sys.executable
    plan = [phases.Phase("hangs", [py, "-c", "import time; time.sleep(600)"], 1, 2, rows=False),
            phases.Phase("kills-itself", [py, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], 1, 30,
                         rows=False),
            phases.Phase("fails", [py, "-c", "raise SystemExit('a device fault, say')"], 1, 30, rows=False),
            phases.Phase("runs", [py, "-c", "print('fine')"], 1, 30, rows=False),
            phases.Phase("too-big", [py, "-c", "print('never')"], 10_000, 30, rows=False)]
    t = __import__("time").monotonic()
    statuses = phases.run_phases(plan, tmp_path, budget_s=120)
    assert __import__("time").monotonic() - t < 60  # the hang cost its deadline, not the budget
    assert [(s["phase_status"], s["status"]) for s in statuses] == [
        ("hangs", "timeout"), ("kills-itself", "crashed"), ("fails", "failed"), ("runs", "ok"), ("too-big", "skipped")]
    assert "SIGKILL" in statuses[1]["detail"] and "a device fault" in statuses[2]["detail"]
    assert (tmp_path / "runs.log").read_text().strip() == "fine"
    recorded = [json.loads(line)["status"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert recorded == ["timeout", "crashed", "failed", "ok", "skipped"]


def test_a_failed_megakernel_turns_the_rest_of_the_budget_to_diagnosis(tmp_path):
    import importlib
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        phases = importlib.import_module("gpu_phases")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    py = sys.executable
    row = json.dumps({"phase": "llama-1b", "model": "m", "backend": "mega", "batch": 1, "error": "MegakernelTimeout"})
    write = f"open({str(tmp_path / 'results.jsonl')!r}, 'a').write({row!r} + '\\n')"
    plan = [phases.Phase("llama-1b", [py, "-c", write], 1, 30, rows=False),
            phases.Phase("medium-glm5", [py, "-c", "print('not reached')"], 1, 30, rows=False)]
    fallback = [phases.Phase("diag-one-worker", [py, "-c", "print('diagnosing')"], 1, 30, rows=False)]
    statuses = phases.run_phases(plan, tmp_path, budget_s=60, fallback=fallback)
    assert [s["phase_status"] for s in statuses] == ["llama-1b", "diag-one-worker"]


def test_short_soak_passes(tmp_path):
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--clients", "12", "--duration", "4", "--max-batch", "4",
           "--max-queue", "6", "--disconnect", "0.3", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    s = json.loads(out.read_text())
    assert s["completed"] > 0 and s["disconnected"] > 0 and s["malformed_kinds"] >= 30
    assert s["5xx"] == 0 and s["hung"] == 0 and s["failures"] == []
    assert s["after"]["free_slots"] == s["after"]["max_batch"] == 4 and all(s["agree"].values())


def test_soak_fails_on_a_server_fault(monkeypatch):
    """The harness is not blind: a server that fails some requests with a 500 makes it exit non-zero."""
    import argparse
    import importlib
    import hyperdecode as hd
    from hyperdecode.engine import core
    from tests.serve.conftest import LiveServer
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    soak = importlib.import_module("soak")
    sample = core.sample
    monkeypatch.setattr(core, "sample", lambda logits, p, g: (
        (_ for _ in ()).throw(RuntimeError("injected")) if p.seed % 3 == 0 else sample(logits, p, g)))
    server = LiveServer(hd.LLM("tiny-llama", device="cpu"), max_batch=4, max_queue=8, max_model_len=2048,
                        max_request_bytes=soak.MAX_REQUEST_BYTES)
    try:
        args = argparse.Namespace(clients=4, duration=1.5, max_attempts=200, disconnect=0.0, malformed=0.0,
                                  hang_s=30.0, seed=1, json=None)
        assert soak.run(server.url, None, args) == 1
    finally:
        server.stop()


def test_spec_decode_gpu_path_smoke(tmp_path):
    """bench/spec_decode.py --gpu on tiny models in the interpreter: verify-step rows, then MTP after distillation
    (accepting something, with plain greedy's tokens)."""
    cmd = [sys.executable, str(ROOT / "bench" / "spec_decode.py"), "--gpu", "--smoke", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "spec_decode.json").read_text())
    verify, mtp = rows[:-1], rows[-1]
    assert [(r["model"], r["k"]) for r in verify] == [("tiny-llama", 3), ("tiny-glm5", 3)]
    assert all(r["one_ms"] > 0 and r["verify_ms"] > 0 for r in verify)
    assert mtp["same_tokens"] and mtp["losses"][-1] < mtp["losses"][0] and mtp["mean_accepted_length"] > 1
