"""Traces: the shipped files by name (no file outside the repository), bad traces named, the synthetic fit."""
import numpy as np
import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.fabric.flow.workload import TRACES, data_dir, load_trace, synthetic, trace_path

MOONCAKE = "mooncake-conversation"


def test_synthetic_generator_fits_the_trace():
    w = load_trace(MOONCAKE)
    s = synthetic(w, num_requests=5000, seed=1)
    assert abs(np.log(s.input_tokens).mean() - np.log(w.input_tokens).mean()) < 0.1
    assert abs(s.rate - w.rate) / w.rate < 0.1


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("hello,world\n1,2\n"), "unknown trace format"),
    (lambda p: p.write_text('{"timestamp": 0, "input_length": -5, "output_length": 3}\n'), "input length -5"),
    (lambda p: p.write_text('{"timestamp": 0, "input_len": 5}\n'), "not a Mooncake trace row"),
    (lambda p: p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,x,3\n"),
     "not an Azure trace row"),
])
def test_bad_traces(tmp_path, make, message):
    p = tmp_path / "trace.txt"
    make(p)
    with pytest.raises(ConfigError, match=message):
        load_trace(p)


def test_azure_trace_reads():
    w = load_trace("azure-code")
    assert len(w) == 8819 and w.arrival_s[0] == 0 and (np.diff(w.arrival_s) >= 0).all()


@pytest.mark.parametrize("name, rows, first_input", [("mooncake-conversation", 12031, 6758),
                                                     ("mooncake-synthetic", 3993, None), ("azure-code", 8819, None)])
def test_the_shipped_traces_load_by_name(name, rows, first_input):
    path = trace_path(name)
    assert path.parent == data_dir() / "traces" and path.is_file()
    w = load_trace(name)
    assert len(w) == rows and w.arrival_s[0] == 0 and (np.diff(w.arrival_s) >= 0).all()
    assert (w.hash_ids is not None) == name.startswith("mooncake")
    if first_input:
        assert w.input_tokens[0] == first_input


def test_the_data_folder_is_the_repository_s_and_documents_every_trace():
    from pathlib import Path
    repo = Path(__file__).resolve().parents[3]
    assert data_dir() == repo / "data"
    readme = (repo / "data" / "README.md").read_text()
    for name, file in TRACES.items():
        assert f"`{name}`" in readme and file in readme
    assert "Apache-2.0" in readme and "CC-BY-4.0" in readme and (repo / "data/traces/LICENSE-Apache-2.0.txt").exists()


def test_a_missing_data_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDECODE_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match="trace 'azure-code': .*azure_llm_2023_code.csv is missing"):
        load_trace("azure-code")
    with pytest.raises(ConfigError, match="nope.jsonl: trace file not found"):
        load_trace(tmp_path / "nope.jsonl")


def test_no_fabric_test_reads_outside_the_repository():
    from pathlib import Path
    here = Path(__file__).resolve().parents[1]
    for test in here.rglob("*.py"):
        text = test.read_text()
        assert "shared/" + "traces" not in text and "HYPERDECODE_" + "TRACES" not in text, test
