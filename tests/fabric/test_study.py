"""The study's rules (knee, claims, NIC ablation) on hand-made rows, and `hyperdecode fabric study` end to end."""
import json
import subprocess
import sys

from hyperdecode.fabric.comparison import claims, knee, nic_ablation

MOONCAKE = "mooncake-conversation"


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


def test_study_cli_writes_the_report_with_the_sensitivity_table(tmp_path):
    """A small study end to end (64 GPUs, 16-GPU prefill instances over two servers, the trace's first 150 requests
    in a closed loop of 48 clients, the affine decode step): README.md with the calibration, the symptoms, a verdict
    per claim citing rows, the sensitivity table with every axis, optics under both conventions; the runs' table and
    JSON; the plots."""
    r = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", "study", "--gpus", "64",
                        "--switch-tbps", "12.8", "--trace", MOONCAKE, "--max-requests", "150", "--sessions", "48",
                        "--gpus-per-instance", "16", "--decode-plan", "affine", "--nic-gbps", "100,200,400",
                        "--sensitivity", "--jobs", "2", "--out-dir", str(tmp_path),
                        "--json", str(tmp_path / "rows.json")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    readme = (tmp_path / "README.md").read_text()
    for heading in ("## The operating point", "## Calibration: Z.ai's NIC ablation", "### ROFT's symptoms",
                    "## The claims", "## Sensitivity: one modelling choice at a time", "## Optics, two conventions",
                    "## Not modelled"):
        assert heading in readme, heading
    for axis in ("port splitting", "placement", "hash model", "ROFT tiers", "optics counting", "NIC speed"):
        assert f"| {axis} |" in readme, axis
    table = readme.split("## Sensitivity")[1].split("## Every comparison run")[0]
    rows = [line for line in table.splitlines() if line.startswith("| S")]
    assert len(rows) == 14 and all(line.count(" / ") >= 3 for line in rows)  # four verdicts per row
    claims_table = readme.split("## The claims")[1].split("## Sensitivity")[0]
    for claim in ("+15 % throughput", "−40.6 % TTFT P99", "−1/3 switches", "−1/3 optics"):
        assert f"| {claim} |" in claims_table and "S0" in claims_table
    assert "| roft | 100G |" in readme and "2 per fibre link" in readme and "switch-side modules" in readme
    assert "| 100G kv+ep | x1 | roft |" in (tmp_path / "study.md").read_text()
    saved = json.loads((tmp_path / "study.json").read_text())
    assert json.loads((tmp_path / "rows.json").read_text()) == saved and len(saved["sensitivity"]) == 14
    assert all(row["requests_completed"] == 150 for row in saved["rows"])
    for png in ("nic_ablation.png", "baseline.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in readme
