"""The GPU benchmark script, run in its CPU smoke mode so that it cannot rot between device sessions."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_decode_gpu_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "decode_gpu.py"), "--smoke", "--models", "tiny-llama,tiny-glm5",
           "--batches", "2", "--steps", "2", "--warm", "1", "--backends", "reference,graph,mega,compile", "--long",
           "48", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "decode_gpu.json").read_text())
    assert [(r["model"], r["backend"], r["context"] > 48) for r in rows] == \
        [(m, b, long) for m in ("tiny-llama", "tiny-glm5") for b, long in
         (("reference", False), ("graph", False), ("mega", False), ("compile", False), ("graph", True),
          ("mega", True))]
    for r in rows:
        assert "error" not in r and r["tok_s"] > 0 and 0 < r["mbu"] < 1 and r["ceiling_tok_s"] > 0
        assert r["backend"] == "reference" or r["context"] > 48 or (r["ok"] and r["near_ties"] == 0), r
        if r["backend"] == "mega":
            assert 0 < r["predicted_mbu"] < 1 and r["predicted_tok_s"] > 0


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
