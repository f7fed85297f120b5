"""`backend="auto"`'s measured choice: the faster candidate wins, a failing one is skipped, the choice is cached."""
import json

import pytest

from hyperdecode.engine import autoselect


def test_the_faster_backend_is_chosen_and_a_failing_one_skipped():
    def timer(make):
        return make()

    def broken():
        raise RuntimeError("no Triton here")

    assert autoselect.choose({"graph": lambda: 3e-3, "mega": lambda: 1e-3}, timer)[0] == "mega"
    assert autoselect.choose({"graph": lambda: 3e-3, "mega": lambda: 5e-3}, timer)[0] == "graph"
    assert autoselect.choose({"graph": lambda: 3e-3, "mega": broken}, timer) == ("graph", {"graph": 3e-3})
    with pytest.raises(RuntimeError, match="no fast backend ran"):
        autoselect.choose({"mega": broken}, timer)


def test_the_choice_is_measured_once_and_cached(tmp_path, monkeypatch):
    measured = []

    def choose(makers):
        measured.append(sorted(makers))
        return "graph", {"graph": 1e-3, "mega": 2e-3}

    monkeypatch.setattr(autoselect, "choose", choose)
    path = tmp_path / "backend_choice.json"
    makers = {"graph": None, "mega": None}
    assert autoselect.cached_choice(path, "k1", makers) == "graph"
    assert autoselect.cached_choice(path, "k1", makers) == "graph"
    assert measured == [["graph", "mega"]]
    assert json.loads(path.read_text())["k1"]["seconds_per_step"] == {"graph": 1e-3, "mega": 2e-3}
    path.write_text("not json")  # a damaged cache is measured again, not an error
    assert autoselect.cached_choice(path, "k1", makers) == "graph" and len(measured) == 2


def test_auto_works_where_no_hyperdecode_is_installed(tmp_path, monkeypatch):
    """The device runs the tree from a folder (PYTHONPATH), so importlib.metadata knows no `hyperdecode`: the choice's
    key takes the version from `hyperdecode.__version__`."""
    import importlib.metadata
    import hyperdecode as hd
    real = importlib.metadata.version

    def version(name):
        if name == "hyperdecode":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setenv("HYPERDECODE_CACHE", str(tmp_path))
    llm = hd.LLM("tiny-llama", device="cpu", backend="auto")
    assert llm.backend in ("reference", "native") and llm.generate("hi", max_tokens=2).token_ids
    [entry] = json.loads((tmp_path / "backend_choice.json").read_text()).values()
    assert entry["choice"] == llm.backend
