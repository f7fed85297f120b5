"""ns-3 (the optional `ns3` wheel: pip install -e ".[ns3]") against the max-min flow model on small fabrics, with
the project's own routes: long-lived TCP flows' goodput equals their max-min rate times TCP's payload share, on a
leaf-spine and on a 3:1 oversubscribed one whose leaves have two parallel uplinks (routes are per cable)."""
import numpy as np
import pytest

from hyperdecode.fabric import fattree
from hyperdecode.fabric.packet.ns3check import (cross_check, destination_routes, flow_paths, maxmin_gbps,
                                         random_routable_pairs, routable)

pytestmark = pytest.mark.slow


def test_routes_refuse_two_ways_to_one_gpu():
    """Eight GPUs to GPU 15 on a leaf-spine: ECMP sends some leaf's flows up different spines, which static
    destination routes cannot carry; `routable` keeps a subset they can."""
    t = fattree(16, 8, gpus_per_server=1)
    pairs = [(a, 15) for a in range(8)]
    with pytest.raises(ValueError, match="flows to GPU 15 leave node"):
        destination_routes(t, pairs, flow_paths(t, pairs))
    kept = routable(t, pairs)
    destination_routes(t, kept, flow_paths(t, kept))
    assert kept[0] == (0, 15) and 1 < len(kept) < len(pairs)


@pytest.mark.parametrize("topo, n, seed", [(fattree(8, 4, gpus_per_server=1), 6, 1),
                                           (fattree(16, 8, gpus_per_server=1, oversubscription=3), 8, 0)])
def test_ns3_goodput_equals_max_min(topo, n, seed):
    pytest.importorskip("ns")
    pairs = random_routable_pairs(topo, n, seed)
    rates = maxmin_gbps(topo, flow_paths(topo, pairs))
    assert len(set(np.round(rates, 3))) > 1 or len(pairs) < 3  # more than one bottleneck level, where it can
    rows = cross_check(topo, pairs)
    for r in rows:
        assert r["ratio"] == pytest.approx(1.0, abs=0.05), r
