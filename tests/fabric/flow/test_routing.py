"""Routes against known answers: ECMP's balls-in-bins occupancy, ZCube's perfectly even cross-port all-to-all,
one-switch paths for pairs sharing a switch, distinct keys; the hash models (polarized, low-entropy, spray) and the
split port policy."""
import math

import numpy as np
import pytest

from hyperdecode.fabric import roft, zcube
from hyperdecode.fabric.flow.routing import Router


def test_ecmp_matches_balls_in_bins():
    t = roft(512, 32)  # leaf uplinks: 16, one to each of 16 spines
    router = Router(t)
    up = 16
    expected = up * (1 - (1 - 1 / up) ** up)  # distinct uplinks used by `up` hashed flows
    used = []
    for trial in range(400):
        links = {router.path(0, 128, key=trial * 1000 + k)[1] for k in range(up)}  # unit 0 -> unit 1, rail 0
        used.append(len(links))
    se = np.std(used) / math.sqrt(len(used))
    assert abs(np.mean(used) - expected) < 4 * se + 0.05
    assert 0.60 < np.mean(used) / up < 0.68  # ~63 % of the paths, the balls-in-bins anchor


def test_zcube_cross_port_all_to_all_loads_every_inter_switch_link_equally():
    n = 8
    t = zcube(n)
    router = Router(t, "balanced")
    att = t.attachments()
    load = np.zeros(2 * t.num_links)
    for s in range(n * n):
        for d in range(n * n):
            if s != d and not set(att[s]) & set(att[d]):
                for _ in range(2):  # the two cross-port pairings
                    for link in router.path(s, d, key=0):
                        load[link] += 1
    fabric = np.concatenate([[2 * i, 2 * i + 1] for i in np.nonzero(t.link_port < 0)[0]])
    assert load[fabric].min() == load[fabric].max() > 0


def test_pairs_sharing_a_switch_take_the_one_switch_path():
    """A ZCube pair in the same block (or residue group) goes through that switch under every port policy, never
    on a two-switch pairing that ties with it in total (the paper form and the blog form with parallel links)."""
    from hyperdecode.fabric import zcube
    from hyperdecode.fabric.flow.routing import Router
    for topo in (zcube(4), zcube(num_gpus=64, gpus_per_switch=16, links_per_pair=4)):
        att = topo.attachments()
        for policy in ("fixed", "balanced", "hashed"):
            router = Router(topo, policy)
            for src in range(topo.num_gpus):
                for dst in range(topo.num_gpus):
                    if src != dst and set(att[src]) & set(att[dst]):
                        for key in range(3):
                            assert len(router.path(src, dst, key)) == 2, (topo.params, policy, src, dst)


def test_flow_keys_stay_distinct_beyond_16_qps_and_64_ranks():
    from hyperdecode.fabric.flow.routing import mix
    keys = {mix(req, r, qp) for req in range(8) for r in range(128) for qp in range(32)}
    assert len(keys) == 8 * 128 * 32


def test_polarized_hashing_repeats_the_leaf_choice_at_the_next_tier():
    """3-tier ROFT on radix 8: a leaf has 4 uplinks to its pod's aggregation switches and each of those 4 to cores.
    With one hash for every tier a flow takes uplink j at both (16 leaf-agg-core combinations shrink to 4); with a
    fresh hash per hop all 16 appear."""
    t = roft(128, 8, tiers=3)
    src, dst = 0, 127  # different pods: up to the core and down again
    combos = {}
    for model in ("ideal", "polarized"):
        router = Router(t, hashing=model)
        combos[model] = {tuple(router.path(src, dst, key=k)[1:3]) for k in range(400)}
    assert len(combos["polarized"]) == 4 and len(combos["ideal"]) == 16


def test_low_entropy_keeps_every_qp_of_a_pair_on_one_path():
    router = Router(roft(512, 32), hashing="low-entropy")
    paths = {tuple(router.path(0, 128 + 3, key=k, qp=q)) for k in range(50) for q in range(4)}
    assert len(paths) == 1
    ideal = Router(roft(512, 32))
    assert len({tuple(ideal.path(0, 131, key=k)) for k in range(50)}) > 8


def test_spraying_splits_a_qp_evenly_over_every_equal_path():
    t = roft(512, 32)  # 16 spines: a cross-unit, cross-rail QP has 16 equal paths
    routes = Router(t, hashing="spray").routes(0, 131, key=1)
    assert len(routes) == 16 and sum(share for _, share in routes) == pytest.approx(1.0)
    assert {share for _, share in routes} == {1 / 16} and len({path[1] for path, _ in routes}) == 16


def test_split_puts_a_transfer_on_both_ports_at_both_ends():
    """ZCube(8, 2): QP k takes pairing k mod 2 of the cheaper port-disjoint set, also for GPUs that share a switch
    (the one-switch path alone would leave the other port idle)."""
    t = zcube(8)
    router = Router(t, "split")
    att = t.attachments()
    for src, dst in ((0, 9), (0, 3), (0, 8)):  # no shared switch; same block; same residue
        used = [router.ports(src, dst, key=7, qp=q) for q in range(4)]
        assert {p for p, _ in used} == {0, 1} and {q for _, q in used} == {0, 1}, (src, dst, used)
        assert used[0] != used[1] and used[0] == used[2]
    assert set(att[0]) & set(att[3]) and set(att[0]) & set(att[8])
