"""The study's rules (knee, claims, NIC ablation) on hand-made rows, and `hyperdecode fabric study` end to end."""
import json
import subprocess
import sys

import pytest

from hyperdecode.fabric.study import claims, knee, nic_ablation

from .test_sim import MOONCAKE


def row(name, scale, thr, ttft, nic=400, traffic="kv"):
    return {"name": name, "rate_scale": scale, "throughput_tok_s": thr, "ttft_p99_s": ttft, "nic_gbps": nic,
            "variant": f"{nic}G {traffic}"}


def test_knee_is_the_first_load_whose_throughput_stops_following_it():
    rows = [row("roft", 1, 100, 1), row("roft", 10, 950, 1), row("roft", 20, 1700, 1), row("roft", 40, 1800, 9)]
    assert knee(rows) == 20  # 1700 / 20 = 85 < 90 % of 100
    assert knee(rows[:2]) is None


def test_claims_give_each_change_and_the_fixed_rule_s_verdict():
    rows = [row("zcube", 10, 115, 0.6), row("roft", 10, 100, 1.0),
            row("zcube", 50, 101, 1.0), row("roft", 50, 100, 1.0)]
    counts = {"zcube": {"switches": 16, "optics": 1024}, "roft": {"switches": 24, "optics": 1024}}
    lines = claims(rows, counts)
    assert lines[0] == ("- **400G kv**, zcube over roft: throughput x10 +15.0 %, x50 +1.0 %; TTFT P99 x10 -40.0 %, "
                        "x50 +0.0 %.")
    assert lines[1] == "  - +15 % throughput: reproduced at x10."
    assert lines[2] == "  - -40.6 % TTFT P99: reproduced at x10."
    assert lines[3] == "- **-1/3 switches**: 16 vs 24 (-33.3 %): reproduced."
    assert lines[4] == "- **-1/3 optics**: 1,024 vs 1,024 (+0.0 %): not reproduced."


def test_nic_ablation_by_hand():
    rows = [row("roft", 1, 100, 2.0, nic=100), row("roft", 1, 100, 2.0, nic=200),
            row("roft", 8, 500, 9.0, nic=100), row("roft", 8, 600, 6.0, nic=200)]
    lines = nic_ablation(rows)
    assert lines[1] == ("- kv, roft, 100G -> 200G: throughput x1 +0.0 %, x8 +20.0 %; TTFT P99 x1 +0.0 %, x8 -33.3 %; "
                        "Z.ai's direction at x8.")
    assert nic_ablation(rows[::2]) == []  # one NIC speed: nothing to compare


@pytest.mark.skipif(not MOONCAKE.exists(), reason="needs the shared Mooncake trace")
def test_study_cli_writes_report(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", "study", "--gpus", "256",
                        "--switch-tbps", "12.8", "--trace", str(MOONCAKE), "--max-requests", "800",
                        "--scales", "1,20", "--nic-gbps", "200,400", "--out-dir", str(tmp_path),
                        "--json", str(tmp_path / "rows.json")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "study.md").read_text()
    assert "| 400G kv | x1 | zcube |" in md and "| 400G kv | x20 | roft |" in md
    for png in ("ttft_vs_load.png", "util_cdf.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md
    assert "## The seed's claims" in md and "- **-1/3 switches**: " in md
    rows = json.loads((tmp_path / "study.json").read_text())
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    for key in ("throughput_tok_s", "goodput_per_gpu", "ttft_p50_s", "ttft_p99_s", "pause_s_total"):
        assert all(isinstance(r[key], float) for r in rows), key
    assert {r["name"] for r in rows} == {"zcube", "zcube-single-path", "roft", "roft-3-tier"}
    assert all(r["requests_completed"] == 800 for r in rows)
    # the study says which forms it ran: 256 GPUs on radix-64 switches at 200G fill them in the blog form
    blog = "- 400G kv, zcube: ZCube, 32 GPUs per switch, 8 switches per group, 16 switches; blog form, 4 parallel links"
    paper = "- 400G kv, zcube-single-path: ZCube, 16 GPUs per switch, 16 switches per group, 32 switches; paper form"
    assert blog in md and paper in md
    # the 200G runs are the same switches with slower ports: only the speed changes in the NIC ablation
    assert blog.replace("400G", "200G") in md and paper.replace("400G", "200G") in md
    assert "- 400G kv, roft: ROFT, 2 tiers" in md and "- 400G kv, roft-3-tier: ROFT, 3 tiers" in md
    assert "## TTFT by stage at x1\n" in md and "| 400G kv | roft | " in md.split("## TTFT by stage")[1]
    assert "## NIC ablation" in md and "- kv, roft, 200G -> 400G: throughput x1 " in md
