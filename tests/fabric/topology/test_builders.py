"""Counts against the paper's tables (network.md §1.4) and the ROFT formulas; JSON and networkx exports."""
import networkx as nx
import numpy as np
import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.fabric import Topology, fattree, roft, zcube
from hyperdecode.fabric.topology.report import compare


@pytest.mark.parametrize("n, switches, copper, fiber, optics", [
    (32, 64, 1024, 2048, 4096), (64, 128, 4096, 8192, 16384), (128, 256, 16384, 32768, 65536)])
def test_zcube_counts_match_the_paper(n, switches, copper, fiber, optics):
    c = zcube(n).counts()
    assert (c["gpus"], c["switches"], c["copper_links"], c["fiber_links"], c["optics"]) == \
        (n * n, switches, copper, fiber, optics)
    assert c["switches_by_radix"] == {f"{2 * n}x200G": 2 * n} and c["nic_ports"] == 2 * n * n


@pytest.mark.parametrize("gpus, radix, tiers, switches, links, optics", [
    (1024, 32, 3, 160, 3072, 6144), (4096, 64, 3, 320, 12288, 24576), (16384, 128, 3, 640, 49152, 98304),
    (1024, 128, 2, 24, 2048, 4096), (1024, 64, 2, 48, 2048, 4096), (512, 32, 2, 48, 1024, 2048)])
def test_roft_counts_match_the_paper_and_formulas(gpus, radix, tiers, switches, links, optics):
    c = roft(gpus, radix, tiers=tiers).counts()
    assert (c["switches"], c["fiber_links"], c["optics"], c["copper_links"]) == (switches, links, optics, 0)
    assert c["switches"] == (3 if tiers == 2 else 5) * gpus // radix and links == tiers * gpus


def test_paper_comparison_1024_on_12_8T():
    z, r, _ = compare(1024, 12.8)
    assert (z["switches"], r["switches"]) == (64, 160)
    assert round(100 * (z["switches"] / r["switches"] - 1), 1) == -60.0
    assert round(100 * (z["optics"] / r["optics"] - 1), 1) == -33.3
    z16, r16, _ = compare(16384, 51.2)
    assert (z16["switches"], r16["switches"]) == (256, 640)


def test_rail_mapping():
    t = roft(512, 32)  # scalable units of 16 servers x 8 rails
    leaf = t.attachments()[:, 0]
    g = np.arange(512)
    assert (leaf == (g // 128) * 8 + g % 8).all()
    assert len(set(leaf[g % 8 == 3][:16])) == 1  # rank-3 GPUs of one unit share their rail leaf
    plain = fattree(512, 32).attachments()[:, 0]
    assert (plain == g // 16).all()


def test_zcube_blog_form_and_oversubscription():
    t = zcube(num_gpus=128, gpus_per_switch=16, links_per_pair=2)
    assert t.params["switches_per_group"] == 8 and t.params["oversubscription"] == 1.0
    assert t.counts()["switch_links"] == 8 * 8 * 2
    assert zcube(num_gpus=128, gpus_per_switch=16).params["oversubscription"] == 2.0


@pytest.mark.parametrize("call, message", [
    (lambda: zcube(0), "'n' must be a positive integer"),
    (lambda: zcube(16, k=3), "only ZCube"),
    (lambda: zcube(40, switch_radix=64), "largest that fits is ZCube\\(32, 2\\) = 1024 GPUs"),
    (lambda: zcube(num_gpus=100, gpus_per_switch=7), "multiple of gpus_per_switch"),
    (lambda: roft(1024, 32), "holds at most 512 GPUs.*tiers=3 holds up to 8192"),
    (lambda: roft(10000, 32, tiers=3), "holds at most 8192 GPUs"),
    (lambda: roft(1020, 64), "multiple of gpus_per_server"),
    (lambda: roft(512, 31), "must be even"),
    (lambda: roft(256, 32, tiers=4), "'tiers' must be 2 or 3"),
    (lambda: roft(256, 32, oversubscription=0.5), "'oversubscription' must be >= 1.0"),
])
def test_bad_parameters(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


@pytest.mark.parametrize("build", [lambda: zcube(8), lambda: zcube(num_gpus=96, gpus_per_switch=8),
                                   lambda: roft(256, 16, tiers=3), lambda: fattree(512, 32)])
def test_networkx_export_agrees_with_counts(build):
    t = build()
    G = t.to_networkx()
    c = t.counts()
    gpus = [n for n, d in G.nodes(data=True) if d["kind"] == "gpu"]
    assert len(gpus) == c["gpus"] and G.number_of_nodes() == c["gpus"] + c["switches"]
    assert G.number_of_edges() == c["links"]
    media = [d["medium"] for _, _, d in G.edges(data=True)]
    assert media.count("copper") == c["copper_links"] and media.count("fiber") == c["fiber_links"]
    assert all(G.degree(g) == t.nic_ports for g in gpus)
    ports = sorted(d["port"] for u, v, d in G.edges(gpus[5], data=True))
    assert ports == list(range(t.nic_ports))
    assert nx.is_connected(G)


def test_json_round_trip(tmp_path):
    for t in (zcube(8, links_per_pair=2), roft(256, 16, tiers=3)):
        t.save(tmp_path / "t.json")
        back = Topology.load(tmp_path / "t.json")
        assert back.counts() == t.counts() and back.params == t.params
        for k in ("switch_radix", "link_a", "link_b", "link_gbps", "link_medium", "link_port", "switch_tier"):
            assert np.array_equal(getattr(back, k), getattr(t, k))


def test_bad_topology_json(tmp_path):
    d = zcube(4).to_dict()
    d["link_b"][0] = 10 ** 6
    (tmp_path / "bad.json").write_text(__import__("json").dumps(d))
    with pytest.raises(ConfigError, match="outside"):
        Topology.load(tmp_path / "bad.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="'format'"):
        Topology.load(tmp_path / "x.json")
