import json
import subprocess
import sys

import pytest


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", *args], capture_output=True,
                          text=True, timeout=300)


def test_build_describe_round_trip(tmp_path):
    out = tmp_path / "z.json"
    r = cli("build", "zcube", "--n", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "switches 16" in r.stdout and out.exists()
    d = cli("describe", str(out), "--json")
    assert d.returncode == 0, d.stderr
    desc = json.loads(d.stdout)
    assert desc["diameter"]["diameter"] == 2 and desc["bisection"]["full"]
    assert desc["multiplicity"]["paths_per_best_pairing"] == [1, 1]


def test_compare_table_and_json():
    r = cli("compare", "--gpus", "1024", "--switch-tbps", "12.8")
    assert r.returncode == 0, r.stderr
    assert "switches -60.0 %" in r.stdout and "optics -33.3 %" in r.stdout
    rows = json.loads(cli("compare", "--gpus", "1024", "--switch-tbps", "12.8", "--json").stdout)
    assert [r["topology"] for r in rows] == ["zcube", "roft", "fattree"] and rows[0]["diameter"] == 2


def test_draw_writes_a_png(tmp_path):
    for args in (("zcube", "--n", "6"), ("roft", "--gpus", "256", "--switch-radix", "16", "--tiers", "3")):
        png = tmp_path / f"{args[0]}.png"
        r = cli("draw", *args, "--out", str(png))
        assert r.returncode == 0, r.stderr
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize("args, message", [
    (("build", "roft", "--gpus", "1024", "--switch-radix", "32"), "holds at most 512 GPUs"),
    (("build", "roft", "--gpus", "1024"), "needs --gpus and --switch-radix"),
    (("build", "torus"), "not zcube, roft, fattree"),
    (("describe", "missing.json"), "not found"),
    (("compare", "--gpus", "100000", "--switch-tbps", "12.8"), "largest is ZCube(32, 2) = 1024 GPUs"),
    (("draw", "zcube", "--n", "64", "--out", "x.png"), "small instances"),
])
def test_bad_arguments(args, message):
    r = cli(*args)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
