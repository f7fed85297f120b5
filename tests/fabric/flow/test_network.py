"""The max-min flow network against hand-computed answers: line rate, equal shares, two bottlenecks, strict
priority classes, batched arrivals and removals, reroutes, time at each utilisation level; weighted flows (QPs in
lockstep, sprayed fractions) and demand caps."""
import numpy as np
import pytest

from hyperdecode.fabric.events import EventQueue
from hyperdecode.fabric.flow.network import FlowNetwork


def run_flows(capacity, flows):
    """flows: (start, path, size) -> finish times, with the simulator's own event loop."""
    ev, finish = EventQueue(), {}
    net = FlowNetwork(np.array(capacity, dtype=float), lambda f, eta: ev.at(eta, done, f, f.version))

    def done(f, version):
        if f.version == version and f.id in net.flows:
            net.remove(f, ev.now)
            finish[f.tag] = ev.now

    for i, (start, path, size) in enumerate(flows):
        ev.at(start, lambda p=path, s=size, i=i: net.add(p, s, ev.now, tag=i))
    ev.run()
    return [finish[i] for i in range(len(flows))], net


def test_one_flow_gets_line_rate():
    finish, net = run_flows([10.0, 5.0, 8.0], [(0.0, [0, 1, 2], 20.0)])
    assert finish == [pytest.approx(4.0)]  # 20 bytes at the 5 B/s bottleneck
    assert net.link_bytes.tolist() == pytest.approx([20.0, 20.0, 20.0])


@pytest.mark.parametrize("n", [2, 3, 7])
def test_n_flows_share_a_bottleneck_equally(n):
    finish, _ = run_flows([12.0], [(0.0, [0], 6.0)] * n)
    assert finish == [pytest.approx(6.0 * n / 12.0)] * n


def test_classic_max_min_two_bottlenecks():
    rates = {}
    net = FlowNetwork(np.array([10.0, 4.0]), lambda f, eta: rates.__setitem__(f.tag, f.rate))
    net.add([0], 1e9, 0.0, tag="A")
    net.add([0, 1], 1e9, 0.0, tag="B")
    net.add([1], 1e9, 0.0, tag="C")
    assert (rates["A"], rates["B"], rates["C"]) == (pytest.approx(8.0), pytest.approx(2.0), pytest.approx(2.0))


def test_strict_priority_classes_by_hand():
    """Two classes on a 10 B/s link: the high class (0) takes the line, the low class gets what is left, and moves
    only once the high flow is done (20 B at 10 B/s ends at 2 s; the low flow's 30 B then take 3 s more). A
    high-class flow that a narrower link holds to 4 B/s leaves the low class the other 6 B/s."""
    ev, finish = EventQueue(), {}
    net = FlowNetwork(np.array([10.0, 4.0]), lambda f, eta: ev.at(eta, done, f, f.version))

    def done(f, version):
        if f.version == version and f.id in net.flows:
            net.remove(f, ev.now)
            finish[f.tag] = ev.now

    ev.at(0.0, lambda: net.add([0], 20.0, ev.now, tag="high", priority=0))
    ev.at(0.0, lambda: net.add([0], 30.0, ev.now, tag="low", priority=1))
    ev.run()
    assert finish == {"high": pytest.approx(2.0), "low": pytest.approx(5.0)}
    rates = {}
    net = FlowNetwork(np.array([10.0, 4.0]), lambda f, eta: rates.__setitem__(f.tag, f.rate))
    net.add([0, 1], 1e9, 0.0, tag="high", priority=0)
    net.add([0], 1e9, 0.0, tag="low", priority=1)
    assert rates == {"high": pytest.approx(4.0), "low": pytest.approx(6.0)}


def test_flows_started_and_ended_together_give_the_rates_one_at_a_time_gives():
    """add_many and deferred removals (one recomputation per instant) against one flow at a time."""
    rng = np.random.default_rng(7)
    cap = rng.uniform(5, 15, 6)
    paths = [sorted(rng.choice(6, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(12)]
    one = FlowNetwork(cap, lambda f, eta: None)
    flows_one = [one.add(p, 100.0, 0.0, tag=i) for i, p in enumerate(paths)]
    many = FlowNetwork(cap, lambda f, eta: None)
    flows_many = many.add_many([(p, 100.0, i, 0) for i, p in enumerate(paths)], 0.0)
    assert [f.rate for f in flows_many] == pytest.approx([f.rate for f in flows_one])
    for k in (0, 3, 5):
        one.remove(flows_one[k], 1.0)
        many.remove(flows_many[k], 1.0, defer=True)
    many.flush(1.0)
    left = [k for k in range(12) if k not in (0, 3, 5)]
    assert [flows_many[k].rate for k in left] == pytest.approx([flows_one[k].rate for k in left])
    assert many.link_rate == pytest.approx(one.link_rate)


def test_staggered_flows_complete_exactly():
    finish, _ = run_flows([10.0], [(0.0, [0], 10.0), (0.5, [0], 10.0)])
    assert finish == [pytest.approx(1.5), pytest.approx(2.0)]


def test_reroute_keeps_what_was_sent():
    etas = []
    net = FlowNetwork(np.array([10.0, 5.0]), lambda f, eta: etas.append(eta))
    f = net.add([0], 20.0, 0.0)
    net.reroute(f, [1], 1.0)  # 10 bytes sent at 10 B/s, 10 left at 5 B/s
    assert f.remaining == pytest.approx(10.0) and f.rate == 5.0 and etas == [pytest.approx(2.0), pytest.approx(3.0)]


def test_link_utilisation_p99_by_hand():
    """A link carrying one flow at half its capacity for 1 s, then idle for 1 s, spends half its time at 50 %; a
    second link at full rate for 1 s of 2; P99 is the level a link stays at or below 99 % of the time."""
    from hyperdecode.fabric.flow.summary import link_util_p99
    finish, net = run_flows([10.0, 5.0], [(0.0, [0, 1], 5.0), (1.0, [1], 0.0001)])
    net.close(2.0)
    seconds = net.util_seconds
    assert seconds.sum(axis=1) == pytest.approx([2.0, 2.0])
    assert seconds[0, 25] == pytest.approx(1.0) and seconds[1, -1] == pytest.approx(1.0, abs=1e-4)
    assert link_util_p99(seconds).tolist() == pytest.approx([0.52, 1.0])


def test_qps_in_lockstep_share_per_qp():
    """A flow of 2 QPs on a 9 B/s link beside a 1-QP flow: max-min per QP gives every QP 3 B/s, so the pair's
    link load is 6 and the single flow's 3; a sprayed QP (half on each of two links) counts half on each."""
    net = FlowNetwork([9.0, 8.0, 8.0], lambda f, eta: None)
    pair, single = net.add_many([([([0], 1.0), ([0], 1.0)], 1e9, "pair", 0), ([0], 1e9, "single", 0)], 0.0)
    assert (pair.rate, single.rate) == (pytest.approx(3.0), pytest.approx(3.0))
    assert net.link_rate[0] == pytest.approx(9.0)
    net = FlowNetwork([9.0, 8.0, 8.0], lambda f, eta: None)
    sprayed, other = net.add_many([([([1], 0.5), ([2], 0.5)], 1e9, "spray", 0), ([1], 1e9, "other", 0)], 0.0)
    # link 1: 0.5 r + o <= 8 and link 2: 0.5 r <= 8; max-min: r = o = 16 / 3 fills link 1
    assert sprayed.rate == pytest.approx(16 / 3) and other.rate == pytest.approx(16 / 3)
    assert net.link_rate.tolist() == pytest.approx([0.0, 8.0, 8 / 3])


def test_a_demand_cap_leaves_the_rest_to_others_and_a_new_cap_applies_at_once():
    net = FlowNetwork([10.0], lambda f, eta: None)
    capped, free = net.add_many([([0], float("inf"), "a2a", 0, 2.5), ([0], 1e9, "kv", 0)], 0.0)
    assert (capped.rate, free.rate) == (2.5, 7.5) and capped.bottleneck == -1 and free.bottleneck == 0
    net.set_cap(capped, 8.0, 1.0)
    assert (capped.rate, free.rate) == (5.0, 5.0)
    net.settle(3.0)
    assert capped.moved == pytest.approx(2.5 + 2 * 5.0) and capped.remaining == float("inf")


def reference_rates(capacity, flows):
    """Textbook progressive filling, one link at a time (flows: (links and weights, cap, priority))."""
    left = list(capacity)
    rate = [0.0] * len(flows)
    for level in sorted({p for _, _, p in flows}):
        live = {i for i, (_, _, p) in enumerate(flows) if p == level}
        while live:
            best, who = float("inf"), None
            for link in range(len(left)):
                users = [i for i in live if link in flows[i][0]]
                weight = sum(flows[i][0][link] for i in users)
                if weight and max(left[link], 0) / weight < best:
                    best, who = max(left[link], 0) / weight, users
            capped = [i for i in live if flows[i][1] <= best]
            if capped:
                best, who = min(flows[i][1] for i in capped), [min(capped, key=lambda i: flows[i][1])]
            for i in who:
                rate[i] = best
                live.discard(i)
                for link, w in flows[i][0].items():
                    left[link] -= w * best
    return rate


def test_vectorised_filling_matches_the_textbook_on_random_networks():
    rng = np.random.default_rng(5)
    for _ in range(150):
        links = int(rng.integers(2, 9))
        capacity = rng.uniform(1, 20, links).tolist()
        flows, specs = [], []
        for i in range(int(rng.integers(1, 12))):
            chosen = rng.choice(links, size=int(rng.integers(1, min(3, links) + 1)), replace=False).tolist()
            weights = {int(k): float(rng.choice([0.5, 1.0, 2.0])) for k in chosen}
            cap = float(rng.uniform(0.5, 10)) if rng.random() < 0.3 else float("inf")
            priority = int(rng.integers(0, 2))
            flows.append((weights, cap, priority))
            specs.append(([([k], w) for k, w in weights.items()], 1e9, i, priority, cap))
        made = FlowNetwork(capacity, lambda f, eta: None).add_many(specs, 0.0)
        assert [f.rate for f in made] == pytest.approx(reference_rates(capacity, flows), rel=1e-9, abs=1e-9)
