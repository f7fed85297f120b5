"""Verifier properties, checked exhaustively on small instances against hand-derived values."""
import itertools

import networkx as nx
import numpy as np
import pytest

from hyperdecode.fabric import bisection, diameter, failure_impact, network_cost, path_table, roft, zcube
from hyperdecode.fabric.topology.cost import load_prices
from hyperdecode.fabric.topology.verify import all_pairs, gpu_pairs


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16])
def test_zcube_unique_cross_port_path_exhaustive(n):
    t = zcube(n)
    table = path_table(t)
    pairs = gpu_pairs(t)
    assert pairs.exact and pairs.total == n * n * (n * n - 1) // 2
    disjoint = (n * n) * (n - 1) * (n - 1) // 2  # pairs in different blocks and different residues
    for cross in ("0->1", "1->0"):
        rows = [r for r in table[cross] if not r["shares_switch"]]
        assert rows == [{"shares_switch": False, "switch_hops": 2, "paths": 1, "pairs": disjoint}]
    for same in ("0->0", "1->1"):
        rows = [r for r in table[same] if not r["shares_switch"]]
        assert rows == [{"shares_switch": False, "switch_hops": 3, "paths": n, "pairs": disjoint}]
    assert diameter(t)["diameter"] == (2 if n > 1 else 1)


def test_zcube_pairs_sharing_a_switch_have_a_one_switch_path():
    t = zcube(6)
    att = t.attachments()
    dist, count = all_pairs(t)
    for a, b in itertools.combinations(range(36), 2):
        shared = set(att[a]) & set(att[b])
        if shared:
            assert len(shared) == 1  # two GPUs never share both switches in ZCube(n, 2)
            p, q = list(att[a]).index(*shared), list(att[b]).index(*shared)
            sw = att[a][p]
            assert dist[sw, att[b][q]] == 0 and count[sw, att[b][q]] == 1  # one switch, one path


def test_path_counts_against_networkx():
    t = roft(128, 16, tiers=3)
    dist, count = all_pairs(t)
    G = nx.Graph()
    adj = t.switch_adjacency()
    for i, j in zip(*np.nonzero(np.triu(adj))):
        G.add_edge(int(i), int(j), m=int(adj[i, j]))
    assert t.num_switches == 40
    for s, d in [(0, 5), (0, 20), (3, 39), (10, 30), (17, 33)]:
        paths = list(nx.all_shortest_paths(G, s, d))
        assert dist[s, d] == len(paths[0]) - 1
        with_multiplicity = sum(np.prod([adj[p[k], p[k + 1]] for k in range(len(p) - 1)]) for p in paths)
        assert count[s, d] == with_multiplicity


def test_roft_diameter_and_ecmp_fanout():
    two = roft(512, 32)  # 16 spines
    assert diameter(two)["diameter"] == 3
    rows = path_table(two)["0->0"]
    assert {(r["switch_hops"], r["paths"]) for r in rows} == {(1, 1), (3, 16)}
    three = roft(1024, 32, tiers=3)
    assert diameter(three)["diameter"] == 5
    hops = {r["switch_hops"] for r in path_table(three)["0->0"]}
    assert hops == {1, 3, 5}


def test_bisection_full_and_oversubscribed():
    assert bisection(zcube(8))["full"] and bisection(roft(256, 16, tiers=3), "random")["full"]
    over = bisection(roft(192, 16, oversubscription=3.0))
    assert over["ratio"] == pytest.approx(1 / 3) and over["local_ratio"] == pytest.approx(1 / 3)
    blog = bisection(zcube(num_gpus=128, gpus_per_switch=16))
    assert not blog["full"] and blog["local_ratio"] == 0.5
    assert bisection(zcube(num_gpus=128, gpus_per_switch=16, links_per_pair=2), "interleave")["full"]


def test_single_switch_failure_in_zcube():
    n = 8
    f = failure_impact(zcube(n), switch=0)  # block switch 0: GPUs 0..7 lose port A
    assert f["gpu_ports_lost"] == n and f["gpus_disconnected"] == 0 and f["pairs_unreachable"] == 0
    assert (f["diameter_before"], f["diameter_after"]) == (2, 3)
    # pairs inside block 0 had a 1-switch path via block switch 0; now residue->block x->residue: 3 switches
    assert f["pairs_longer"] == pytest.approx((n * (n - 1) // 2) / (n * n * (n * n - 1) // 2))


def test_single_failures_in_roft():
    t = roft(128, 16)
    leaf = failure_impact(t, switch=0)
    assert leaf["gpus_disconnected"] == 8 and leaf["pairs_unreachable"] > 0
    spine = failure_impact(t, switch=t.num_switches - 1)
    assert spine["gpus_disconnected"] == 0 and spine["pairs_unreachable"] == 0
    assert spine["diameter_after"] == 3
    link = failure_impact(t, link=int(np.nonzero(t.link_port < 0)[0][0]))
    assert link["pairs_unreachable"] == 0
    with pytest.raises(ValueError, match="exactly one"):
        failure_impact(t)


def test_sampling_for_large_instances():
    t = zcube(128)
    pairs = gpu_pairs(t)  # the per-pairing path table samples this large an instance ...
    assert not pairs.exact and pairs.total == 200_000
    d = diameter(t, pairs)
    assert not d["exact"] and d["pairs"] == 200_000 and d["diameter"] == 2


@pytest.mark.parametrize("n, apl, apl_fail", [(32, 2.93939, 2.94129), (64, 2.96923, None), (128, 2.98450, 2.98462)])
def test_exact_average_path_length_reproduces_the_paper(n, apl, apl_fail):
    """APL counts links: 1 + switch hops (GPU -> switch -> switch -> GPU = 3), over every GPU pair, no sampling;
    by hand 3 - 2 / (n + 1) (a pair shares a switch with probability 2 / (n + 1)). The paper's table: ZCube(128,2)
    2.98450, 2.98462 after one switch failure."""
    t = zcube(n)
    d = diameter(t)  # ... the diameter and mean are exact at any size
    assert d["exact"] and d["pairs"] == n * n * (n * n - 1) // 2
    assert round(1 + d["mean_hops"], 5) == pytest.approx(apl, abs=1e-9)
    assert 1 + d["mean_hops"] == pytest.approx(3 - 2 / (n + 1), abs=1e-12)
    if apl_fail is not None:
        f = failure_impact(t, switch=0)
        assert f["exact"] and round(1 + f["mean_hops_after"], 5) == pytest.approx(apl_fail, abs=1e-9)


def test_exact_average_path_length_of_roft():
    assert round(1 + diameter(roft(1024, 32, tiers=3))["mean_hops"], 5) == 5.47214
    assert round(1 + diameter(roft(16384, 128, tiers=3))["mean_hops"], 2) == 5.49  # the paper's ROFT 16k: 5.49


def test_cost_by_hand_and_override(tmp_path):
    t = zcube(2)  # 4 GPUs, 4 switches of radix 4, 4 copper + 8 fiber links at 200G
    c = network_cost(t)
    p = load_prices()
    expected = (4 * 4 * p["switch_port"]["200"] + 16 * p["optic"]["200"] + 8 * p["fiber"]["any"]
                + 4 * p["copper"]["200"] + 8 * p["nic_port"]["200"])
    assert c["total"] == pytest.approx(expected) and c["per_gpu"] == pytest.approx(expected / 4)
    (tmp_path / "p.yaml").write_text("optic:\n  '200': 0\nswitch_port:\n  '200': 100\n")
    cheap = network_cost(t, load_prices(tmp_path / "p.yaml"))
    assert cheap["items"]["switches 4x200G"]["total"] == 1600 and "optics 200G" in cheap["items"]
    assert cheap["total"] == pytest.approx(expected - 16 * p["optic"]["200"] - 16 * (p["switch_port"]["200"] - 100))
    (tmp_path / "bad.json").write_text('{"lasers": {"200": 5}}')
    with pytest.raises(Exception, match="unknown price item 'lasers'"):
        load_prices(tmp_path / "bad.json")
