"""The `hyperdecode` command, run as a user would (a subprocess)."""
import subprocess
import sys

import pytest

import hyperdecode as hd


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "hyperdecode.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=300)


@pytest.mark.parametrize("extra, backend", [((), "native"),
                                            (("--threads", "1", "--quantize", "none", "--backend", "reference"),
                                             "reference")])
def test_generate_streams_text_and_stats(extra, backend):
    """The README's first command (by default the quantized weights in the native step, which `auto` measured
    faster), and the dequantized reference on one thread: both answer Paris."""
    r = cli("generate", "The capital of France is", "--max-tokens", "8", "--device", "cpu", *extra)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "TTFT" in r.stderr and "tok/s" in r.stderr and f"backend {backend}" in r.stderr


def test_generate_with_seed_is_reproducible():
    args = ("generate", "hi", "--model", "tiny-llama", "--temperature", "1", "--seed", "3", "--max-tokens", "12")
    assert cli(*args).stdout == cli(*args).stdout


def test_chat_is_multi_turn():
    r = cli("chat", "--model", "tiny-llama", "--max-tokens", "4", stdin="hello\nagain\n/exit\n")
    assert r.returncode == 0, r.stderr
    prompts = [line for line in r.stderr.splitlines() if line.startswith("[hyperdecode] prompt")]
    assert len(prompts) == 2
    first, second = (int(p.split()[2]) for p in prompts)
    assert second > first  # the second turn carries the first


def test_models_lists_presets():
    r = cli("models")
    assert r.returncode == 0 and "smollm2" in r.stdout and "tiny-llama" in r.stdout


@pytest.mark.parametrize("args, message", [
    (("generate", "x", "--model", "nope"), "model 'nope' is neither a preset"),
    (("generate", "x", "--model", "tiny-llama", "--top-p", "2"), "--top-p must be"),
    (("generate", "x", "--max-tokens", "ten"), "invalid int value"),
    (("generate",), "required: prompt"),
    (("frobnicate",), "invalid choice"),
])
def test_bad_arguments_give_one_line_and_nonzero_exit(args, message):
    r = cli(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_help_everywhere():
    for args in ((), ("generate",), ("chat",), ("models",)):
        r = cli(*args, "--help")
        assert r.returncode == 0 and "usage" in r.stdout


def test_generate_with_speculation_prints_the_same_text_and_its_acceptance():
    args = ("generate", "abc abc abc abc abc", "--model", "tiny-llama", "--device", "cpu", "--max-tokens", "24")
    plain = cli(*args)
    spec = cli(*args, "--speculative", "suffix:4")
    assert plain.returncode == spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout
    assert "speculative: mean accepted length" in spec.stderr and "speculative" not in plain.stderr


def test_the_hardware_table_is_the_one_source():
    """One table: H100 3.35 TB/s and H200 4.8 TB/s by the names torch reports; the schedule model, the plan and
    inspect read their figures from it."""
    from hyperdecode.engine.mega.schedule import H200, Hardware
    from hyperdecode.hardware import for_device, machine
    from hyperdecode.parallel.latency import HARDWARE, load_hardware
    assert for_device("NVIDIA H100 80GB HBM3").hbm_tbps == 3.35
    assert for_device("NVIDIA H200").hbm_tbps == 4.8 and for_device("NVIDIA H200").name == "h200"
    with pytest.raises(hd.ConfigError, match="no hardware row for the device 'NVIDIA A100"):
        for_device("NVIDIA A100-SXM4-80GB")
    assert H200 == Hardware.of(machine("h200")) and H200.bandwidth == machine("h200").copy_tbps * 1e12
    assert Hardware.of(machine("h100"), bandwidth=2.9e12).bandwidth == 2.9e12
    assert HARDWARE["h100"] is machine("h100") and load_hardware("b200").hbm_tbps == machine("b200").hbm_tbps
    r = subprocess.run([sys.executable, "-m", "hyperdecode", "inspect", "llama-3.2-1b", "--hw", "h100"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "at 3.0 TB/s (h100 measured copy; datasheet 3.35 TB/s)" in r.stdout, r.stderr
    from hyperdecode.engine.mega import schedule
    [row] = schedule.main(["tiny-llama", "--hw", "h100"])
    assert row["hw"] == "h100" and row["hardware"]["bandwidth"] == 3.0e12
