"""The GPU benchmark script, run in its CPU smoke mode so that it cannot rot between device sessions."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_decode_gpu_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "decode_gpu.py"), "--smoke", "--models", "tiny-llama,tiny-glm5",
           "--batches", "2", "--steps", "2", "--warm", "1", "--backends", "reference,graph,mega", "--out",
           str(tmp_path)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "decode_gpu.json").read_text())
    assert [(r["model"], r["backend"]) for r in rows] == [(m, b) for m in ("tiny-llama", "tiny-glm5")
                                                         for b in ("reference", "graph", "mega")]
    for r in rows:
        assert "error" not in r and r["tok_s"] > 0 and 0 < r["mbu"] < 1
        assert r["backend"] == "reference" or r["ok"], r
