"""The PFC model against known answers: a finite flow's completion time by hand, the victim-flow rates PFC gives
(C/2, C/(2N), C/(2N)) next to max-min's (C/(N+1), C), headroom never overrun, PFC off == the max-min simulator,
and the pause tree of an incast: two switch tiers in ZCube, three in 3-tier ROFT."""
import json
import random

import pytest

from hyperdecode.fabric import roft, zcube
from hyperdecode.fabric.flow.routing import Router
from hyperdecode.fabric.packet.cases import incast_pause_tree, pfc_demo, victim_case
from hyperdecode.fabric.packet.fabricnet import topology_net
from hyperdecode.fabric.packet.pfc import Net, PacketFlow, PfcConfig, maxmin_rates, simulate


def test_a_finite_flow_finishes_when_store_and_forward_says():
    net = Net()
    a, s, b = net.host("a"), net.switch("s"), net.host("b")
    C, d, chunk = 12.5e9, 1e-6, 4096
    path = [net.cable(a, s, C, d)[0], net.cable(s, b, C, d)[0]]
    r = simulate(net, [PacketFlow("f", path, size=256 * chunk)], until=1e-3, config=PfcConfig(chunk=chunk))
    # 256 chunks leave a back to back; the last one then crosses the second link: 257 serialisations, 2 delays
    assert r.finish["f"] == pytest.approx(257 * chunk / C + 2 * d, rel=1e-9)
    assert sum(r.pause_frames) == 0 and r.drops == 0


@pytest.mark.parametrize("senders", [2, 4, 8])
def test_victim_flow_gets_what_pfc_gives_not_what_max_min_gives(senders):
    C = 100.0
    d = pfc_demo(senders, C)
    rates = {r["name"]: r for r in d["flows"]}
    assert rates["H1"]["gbps"] == pytest.approx(C / 2, rel=0.05)
    assert rates["victim"]["gbps"] == pytest.approx(C / (2 * senders), rel=0.05)
    for i in range(1, senders + 1):
        assert rates[f"incast-{i}"]["gbps"] == pytest.approx(C / (2 * senders), rel=0.05)
        assert rates[f"incast-{i}"]["maxmin_gbps"] == pytest.approx(C / (senders + 1))
    assert rates["H1"]["maxmin_gbps"] == pytest.approx(C / (senders + 1))
    assert rates["victim"]["maxmin_gbps"] == pytest.approx(C)
    assert d["drops"] == 0 and d["pause_frames"] > 0
    assert 0 < d["headroom_used"] <= 1.0  # every port's take after PAUSE fits in 2 BDP + 2 chunks


def test_pfc_off_reproduces_max_min():
    for senders in (2, 4):
        d = pfc_demo(senders, 100.0, pfc=False)
        assert d["pause_frames"] == 0
        for r in d["flows"]:
            assert r["gbps"] == pytest.approx(r["maxmin_gbps"], rel=0.01), r
    # random GPU pairs on a ZCube, routed by the project's router
    topo = zcube(4)
    net, router, rng = topology_net(topo), Router(topo), random.Random(3)
    flows = []
    for n in range(12):
        src, dst = rng.sample(range(topo.num_gpus), 2)
        flows.append(PacketFlow(f"f{n}", router.path(src, dst, key=n)))
    r = simulate(net, flows, until=400e-6, config=PfcConfig(pfc=False))
    fair = maxmin_rates(net, flows)
    for f in flows:
        assert r.gbps[f.name] == pytest.approx(fair[f.name] * 8 / 1e9, rel=0.02), f.name


def test_incast_pause_tree_two_tiers_in_zcube_three_in_roft():
    z = incast_pause_tree(zcube(4), 0, list(range(1, 16)))
    assert z["depth"] == 2 and z["chain"] == 2  # block and residue switches; cross-port routing
    assert z["result"].drops == 0
    f = roft(64, 8, tiers=3)
    senders = list(range(8, 64, 4))  # other servers, other rails
    t = incast_pause_tree(f, 0, senders)
    assert t["depth"] == 3 and t["chain"] > z["chain"]  # leaf, spine, core: the pause reaches the top tier
    assert set(t["pause_s_by_tier"]) == {0, 1, 2}
    assert t["result"].drops == 0


def test_bad_cases_are_named():
    with pytest.raises(ValueError, match="senders"):
        victim_case(0, 100)
    net, flows = victim_case(1, 100)
    with pytest.raises(ValueError, match="must start at a host"):
        simulate(net, [PacketFlow("x", flows[1].path[1:])], until=1e-5)


def test_pfc_demo_command(capsys):
    from hyperdecode.cli import main
    assert main(["fabric", "pfc-demo", "--senders", "2", "--gbps", "100", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in d["flows"]] == ["H1", "incast-1", "incast-2", "victim"]
    assert all(set(r) == {"name", "gbps", "maxmin_gbps"} for r in d["flows"])
    assert main(["fabric", "pfc-demo", "--senders", "3", "--gbps", "200", "--pfc", "off"]) == 0
    assert "victim" in capsys.readouterr().out
    assert main(["fabric", "pfc-demo", "--senders", "2", "--gbps", "100", "--dcqcn", "on", "--ms", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ecn_marks"] > 0
    assert main(["fabric", "pfc-demo", "--senders", "0", "--gbps", "100"]) == 1
    assert "--senders" in capsys.readouterr().err


def test_dcqcn_rates_follow_its_formulas():
    from hyperdecode.fabric.packet.dcqcn import Dcqcn, RateControl, mark_probability
    cfg = Dcqcn(g=1 / 16, fast_recovery=1, rate_ai=1e6, rate_hai=1e7, byte_counter=1 << 30)
    rc = RateControl(cfg, line=1e9)
    rc.on_cnp(now=0.0)  # current x (1 - 1/2), alpha = (1 - g) + g = 1
    assert (rc.rate, rc.target, rc.alpha) == (5e8, 1e9, 1.0)
    rc.on_cnp(now=1e-6)
    assert (rc.rate, rc.target) == (2.5e8, 5e8)
    rc.on_timer(now=30e-6)  # a CNP within the period: nothing changes
    assert rc.rate == 2.5e8
    rc.on_timer(now=60e-6)  # fast recovery: halfway to the target, alpha decays
    assert rc.rate == pytest.approx(3.75e8) and rc.alpha == pytest.approx(15 / 16)
    rc.on_timer(now=120e-6)  # past F rises: additive increase of the target, then halfway
    assert rc.target == pytest.approx(5e8 + 1e6) and rc.rate == pytest.approx((3.75e8 + 5.01e8) / 2)
    assert mark_probability(Dcqcn(), 50 << 10) == 0.0
    assert mark_probability(Dcqcn(), 250 << 10) == pytest.approx(0.1)
    assert mark_probability(Dcqcn(), 1 << 20) == 1.0


def test_dcqcn_acts_before_pfc_and_frees_the_victim():
    """With ECN and DCQCN the senders slow down before the buffers reach XOFF: few or no PAUSE frames, and the
    flows converge to max-min (the victim back at line rate) instead of PFC's C/(2N)."""
    from hyperdecode.fabric.packet.dcqcn import Dcqcn
    C = 100.0
    plain = pfc_demo(2, C, until=50e-3)
    d = pfc_demo(2, C, until=50e-3, config=PfcConfig(dcqcn=Dcqcn()))
    rates = {r["name"]: r for r in d["flows"]}
    assert rates["victim"]["gbps"] == pytest.approx(C, rel=0.05)
    for name in ("H1", "incast-1", "incast-2"):
        assert rates[name]["gbps"] == pytest.approx(rates[name]["maxmin_gbps"], rel=0.15), name
    assert d["ecn_marks"] > 0 and d["drops"] == 0
    assert d["pause_frames"] < plain["pause_frames"] / 10


def test_window_utilisation_shows_the_burst_a_mean_hides():
    """A flow that sends at line rate for half the measuring span: its links' mean utilisation is 1/2, their P99
    over 100 us windows is 1; queues stay within a chunk or two on a path with no contention."""
    net = Net()
    a, s, b = net.host("a"), net.switch("s"), net.host("b")
    C = 12.5e9
    up, down = net.cable(a, s, C)[0], net.cable(s, b, C)[0]
    r = simulate(net, [PacketFlow("f", [up, down], size=C * 1e-3, start=1e-3)], until=3e-3, warmup=1e-3)
    assert r.delivered["f"] / (C * 2e-3) == pytest.approx(0.5, rel=0.01)
    assert r.util_p99[up] == pytest.approx(1.0, abs=0.02) and r.util_p99[down] == pytest.approx(1.0, abs=0.02)
    assert r.queue_p99[down] <= 2 * 4096
    net, flows = victim_case(2, 100)
    incast = simulate(net, flows, until=4e-3)
    to_r = flows[0].path[1]
    assert incast.queue_p99[to_r] > 100 * 4096  # the congested port holds a deep queue in most windows
