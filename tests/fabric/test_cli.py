import json
import subprocess
import sys

import pytest

from tests.conftest import run_main


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", *args], capture_output=True,
                          text=True, timeout=300)


def test_build_describe_round_trip(tmp_path, capsys):
    out = tmp_path / "z.json"
    code, stdout, err = run_main(["fabric", "build", "zcube", "--n", "8", "--out", str(out)], capsys)
    assert code == 0, err
    assert "switches 16" in stdout and out.exists()
    code, stdout, err = run_main(["fabric", "describe", str(out), "--json"], capsys)
    assert code == 0, err
    desc = json.loads(stdout)
    assert desc["diameter"]["diameter"] == 2 and desc["bisection"]["full"]
    assert desc["multiplicity"]["paths_per_best_pairing"] == [1, 1]


def test_compare_table_and_json(capsys):
    code, out, err = run_main(["fabric", "compare", "--gpus", "1024", "--switch-tbps", "12.8"], capsys)
    assert code == 0, err
    assert "switches -60.0 %" in out and "optics -33.3 %" in out
    code, out, _ = run_main(["fabric", "compare", "--gpus", "1024", "--switch-tbps", "12.8", "--json"], capsys)
    rows = json.loads(out)
    assert [r["topology"] for r in rows] == ["zcube", "roft", "fattree"] and rows[0]["diameter"] == 2


def test_compare_counts_optics_both_ways_with_the_reach_that_decides_copper(capsys):
    """1,024 GPUs on 51.2T: the blog form's 128-GPU blocks span 16 servers, beyond a DAC's reach, so with 2 optics
    per fibre link ZCube needs 6,144 against ROFT's 4,096 (+50 %), while counting switch-side modules with breakout
    gives 1,024 against 1,536 (-33.3 %); with copper reaching 16 servers the block links are copper again."""
    code, out, err = run_main(["fabric", "compare", "--gpus", "1024", "--switch-tbps", "51.2"], capsys)
    assert code == 0, err
    assert "+50.0 % (2 per fibre link, copper within 4 servers)" in out and "-33.3 % (switch modules)" in out
    code, out, _ = run_main(["fabric", "compare", "--gpus", "1024", "--switch-tbps", "51.2", "--json",
                             "--reach-servers", "16"], capsys)
    zcube = json.loads(out)[0]["optics_counts"]
    assert (zcube["per_link"], zcube["copper_links"], zcube["reach_servers"]) == (4096, 1024, 16)


def test_draw_writes_a_png(tmp_path, capsys):
    for args in (("zcube", "--n", "6"), ("roft", "--gpus", "256", "--switch-radix", "16", "--tiers", "3")):
        png = tmp_path / f"{args[0]}.png"
        code, _, err = run_main(["fabric", "draw", *args, "--out", str(png)], capsys)
        assert code == 0, err
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
def test_bad_arguments(args, message, capsys):
    code, _, err = run_main(["fabric", *args], capsys)  # in this process: a traceback would fail the test itself
    assert code == 1 and message in err and "Traceback" not in err


@pytest.fixture
def tmp(tmp_path):
    """A directory holding a file, a directory, a 3-request trace, one with a negative timestamp and price tables."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    rows = [(0, 100), (500, 200), (900, 300)]
    (tmp_path / "t.jsonl").write_text("".join(
        json.dumps({"timestamp": t, "input_length": n, "output_length": 4}) + "\n" for t, n in rows))
    (tmp_path / "neg.jsonl").write_text('{"timestamp": 0, "input_length": 9, "output_length": 2}\n'
                                        '{"timestamp": -500, "input_length": 9, "output_length": 2}\n')
    (tmp_path / "badids.jsonl").write_text('{"timestamp": 0, "input_length": 9, "output_length": 2, "hash_ids": 5}\n')
    (tmp_path / "shape.json").write_text('{"switch_port": 400}')
    (tmp_path / "key.yaml").write_text("copper:\n  fast: 3\n")
    return tmp_path


SIM = ("simulate", "--gpus", "64", "--switch-tbps", "12.8", "--trace", "{tmp}/t.jsonl")
ZC = ("build", "zcube", "--n", "4")
ROFT = ("build", "roft", "--gpus", "64", "--switch-radix", "16")
CMP = ("compare", "--gpus", "64", "--switch-tbps", "12.8")
STUDY = ("study", "--gpus", "64", "--switch-tbps", "12.8", "--trace", "{tmp}/t.jsonl", "--out-dir", "{tmp}/st")

FLAGS = [  # (fabric command line, exit code, text of the one-line message); {tmp} is the `tmp` fixture
    (SIM + ("--max-requests", "0"), 1, "--max-requests must be at least 1, got 0"),
    (SIM + ("--max-requests", "-5"), 1, "--max-requests must be at least 1, got -5"),
    (("simulate", "--gpus", "64", "--trace", "{tmp}/neg.jsonl"), 1, "neg.jsonl:2: timestamp -500 must be"),
    (SIM[:-1] + ("{tmp}/adir",), 1, "--trace: {tmp}/adir: cannot read the trace"),
    (SIM[:-1] + ("nosuch",), 1, "--trace: nosuch: trace file not found (a shipped trace's name: "
                                "mooncake-conversation, mooncake-synthetic, azure-code)"),
    (SIM + ("--ttft-slo", "-1"), 1, "--ttft-slo must be a positive number"),
    (SIM + ("--ttft-slo", "0"), 1, "--ttft-slo must be a positive number"),
    (SIM + ("--qps", "0"), 1, "--qps must be at least 1"),
    (SIM + ("--gpus-per-instance", "0"), 1, "--gpus-per-instance must be at least 1"),
    (SIM + ("--gpus-per-instance", "7", "--decode-gpus", "0"), 1, "--gpus-per-instance 7 must divide the 64 GPUs"),
    (SIM + ("--gpus-per-instance", "7"), 1, "--gpus-per-instance 7 must be a multiple or a divisor of a server's"),
    (SIM + ("--rate-scale", "0"), 1, "--rate-scale must be a positive number"),
    (SIM + ("--prefill-tok-s", "0"), 1, "--prefill-tok-s must be a positive number"),
    (SIM + ("--decode-step-s", "-1"), 1, "--decode-step-s must be a positive number"),
    (SIM + ("--seed", "-1"), 1, "--seed must be at least 0"),
    (SIM + ("--nic-gbps", "1", "--topology", "zcube"), 1, "--nic-gbps 1 is too slow"),
    (SIM + ("--switch-tbps", "0.1"), 1, "--switch-tbps 0.1 gives switches of 0 port(s)"),
    (SIM + ("--pd-ratio", "0:1"), 1, "--pd-ratio: "),
    (SIM + ("--fail", "foo"), 1, "--fail: failure 'foo' must look like"),
    (SIM + ("--fail", "link:99999@0"), 1, "--fail: link 99999 is not in"),
    (SIM + ("--prefix-cache", "on"), 1, "t.jsonl: --prefix-cache needs the trace's hash_ids"),
    (SIM[:-1] + ("{tmp}/badids.jsonl",), 1, "badids.jsonl:1: not a Mooncake trace row"),
    (SIM + ("--json", "{tmp}/adir"), 1, "--json {tmp}/adir: is a directory"),
    (SIM + ("--plot", "{tmp}/nodir/p.png"), 1, "--plot {tmp}/nodir/p.png: directory {tmp}/nodir does not exist"),
    (STUDY[:-1] + ("{tmp}/afile",), 1, "--out-dir {tmp}/afile: exists and is not a directory"),
    (STUDY + ("--loads", "1,-2"), 1, "--loads '1,-2' must be positive"),
    (SIM + ("--prefill-slots", "0"), 1, "--prefill-slots must be at least 1, got 0"),
    (SIM + ("--hw", "tpu"), 1, "--hw 'tpu' is not a GPU of the hardware table (h100, h200, b200)"),
    (SIM + ("--decode-gpus", "12"), 1, "--decode-gpus 12 must be a multiple or a divisor of a server's 8 GPUs"),
    (SIM + ("--dcqcn", "maybe"), 2, "--dcqcn: invalid choice"),
    (("build", "zcube"), 1, "zcube needs --n, or --gpus and --gpus-per-switch"),
    (ZC + ("--gpus", "64"), 1, "either --n (paper form) or --gpus and --gpus-per-switch"),
    (("build", "zcube", "--n", "0"), 1, "--n must be at least 1, got 0"),
    (("build", "zcube", "--gpus", "64", "--gpus-per-switch", "7"), 1, "--gpus (64) must be a multiple of "
                                                                       "--gpus-per-switch (7)"),
    (("build", "zcube", "--gpus", "-64", "--gpus-per-switch", "8"), 1, "--gpus must be at least 1, got -64"),
    (ZC + ("--links-per-pair", "0"), 1, "--links-per-pair must be at least 1"),
    (ZC + ("--port-gbps", "-200"), 1, "--port-gbps must be at least 1"),
    (ZC + ("--switch-radix", "0"), 1, "--switch-radix must be at least 1"),
    (ZC + ("--gpus-per-server", "0"), 1, "--gpus-per-server must be at least 1"),
    (ROFT[:-1] + ("15",), 1, "--switch-radix (15) must be even"),
    (ROFT + ("--gpus-per-server", "3"), 1, "--gpus (64) must be a multiple of --gpus-per-server (3)"),
    (ROFT + ("--oversubscription", "0.5"), 1, "--oversubscription must be at least 1"),
    (ROFT + ("--nic-gbps", "0"), 1, "--nic-gbps must be at least 1"),
    (ZC + ("--out", "{tmp}/adir"), 1, "--out {tmp}/adir: is a directory"),
    (ZC + ("--out", "{tmp}/nodir/z.json"), 1, "--out {tmp}/nodir/z.json: directory {tmp}/nodir does not exist"),
    (("draw", "zcube", "--n", "4", "--out", "{tmp}/adir"), 1, "--out {tmp}/adir: is a directory"),
    (("describe", "zcube", "--n", "4", "--prices", "{tmp}/shape.json"), 1,
     "price item 'switch_port' must map port speeds in Gb/s"),
    (("describe", "zcube", "--n", "4", "--prices", "{tmp}/key.yaml"), 1, "copper has key 'fast'"),
    (("describe", "zcube", "--n", "4", "--prices", "{tmp}/adir"), 1, "{tmp}/adir: cannot parse price table"),
    (("describe", "{tmp}/adir.json"), 1, "{tmp}/adir.json: topology file not found"),
    (CMP[:2] + ("0",) + CMP[3:], 1, "--gpus must be at least 1"),
    (CMP[:-1] + ("0",), 1, "--switch-tbps must be a positive number"),
    (CMP + ("--nic-gbps", "0"), 1, "--nic-gbps must be at least 1"),
    (CMP[:2] + ("100",) + CMP[3:], 1, "--gpus (100) must be a multiple of the GPUs per server (8)"),
    (("simulate", "--gpus", "64"), 2, "required: --trace"),
]


@pytest.mark.parametrize("args, code, message", FLAGS)
def test_bad_flags_name_the_flag_or_file(args, code, message, tmp, capsys):
    got, _, err = run_main(["fabric", *(a.replace("{tmp}", str(tmp)) for a in args)], capsys)
    assert got == code, err
    assert message.replace("{tmp}", str(tmp)) in err and err.startswith("hyperdecode")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_max_requests_is_honoured(tmp, capsys):
    code, out, err = run_main(["fabric", *(a.replace("{tmp}", str(tmp)) for a in SIM), "--max-requests", "2"],
                              capsys)
    assert code == 0, err
    assert json.loads(out)["requests_completed"] == 2


def test_draw_names_the_file_it_writes(tmp, capsys):
    code, _, err = run_main(["fabric", "draw", "zcube", "--n", "4", "--out", str(tmp / "pic")], capsys)
    assert code == 0 and f"wrote {tmp / 'pic.png'}" in err and (tmp / "pic.png").exists()


def test_help_lists_every_command(capsys):
    code, out, _ = run_main(["fabric", "--help"], capsys)
    assert code == 0
    for name in ("build", "describe", "compare", "draw", "simulate", "study"):
        assert name in out.split("positional arguments")[0]  # named in the description, not only the list
