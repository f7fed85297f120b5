"""One event core: the flow-level serving model and the packet-level PFC model both run on events.EventQueue, the
only heap in hyperdecode/fabric; the serving model's typed result is what the summary, the study and the hot-window
replays read."""
from pathlib import Path

import numpy as np

import hyperdecode.fabric as fabric
from hyperdecode.fabric import roft
from hyperdecode.fabric.events import EventQueue, Timer
from hyperdecode.fabric.flow.config import SimConfig
from hyperdecode.fabric.flow.model import ModelProfile
from hyperdecode.fabric.flow.result import ServingRun
from hyperdecode.fabric.flow.serving import Cluster, simulate
from hyperdecode.fabric.flow.summary import summarize
from hyperdecode.fabric.flow.workload import Workload
from hyperdecode.fabric.packet.cases import victim_case
from hyperdecode.fabric.packet.hotwindow import hot_windows, window_flows
from hyperdecode.fabric.packet.ports import PfcModel
from hyperdecode.fabric.packet.pfc import PfcConfig


def test_one_heap_in_fabric():
    root = Path(fabric.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "heapq" in p.read_text())
    assert users == ["events.py"]


def test_both_simulators_schedule_on_the_event_queue():
    net, flows = victim_case(2, 100)
    assert isinstance(PfcModel(net, flows, PfcConfig(), 0.0).queue, EventQueue)
    work = Workload(np.array([0.0]), np.array([1000]), np.array([2]), "one")
    assert isinstance(Cluster(roft(64, 16), work, ModelProfile(), SimConfig()).queue, EventQueue)


def test_ties_run_in_order_and_a_moved_timer_fires_once():
    queue, seen = EventQueue(), []
    for name in "abc":
        queue.at(1.0, seen.append, name)
    timer = Timer(queue, seen.append, "t")
    timer.set(0.5)
    timer.set(2.0)
    timer.cancel()
    timer.set(3.0)
    queue.run(until=2.5)
    assert seen == ["a", "b", "c"] and queue.now == 2.0  # the void 0.5 and 2.0 events ran as no-ops
    queue.run()
    assert seen == ["a", "b", "c", "t"] and queue.now == 3.0 and timer.when is None


def test_the_typed_result_feeds_summary_and_hot_windows():
    work = Workload(np.arange(6) * 0.01, np.full(6, 5000), np.full(6, 2), "six")
    run = simulate(roft(64, 16), work, ModelProfile(kv_bytes_per_token=5000), SimConfig(qps=1))
    assert isinstance(run, ServingRun) and run.completed.all()
    assert summarize(run)["requests_completed"] == 6
    window = hot_windows(run, 1.0)[0]
    assert len(window_flows(run, window)) == 6  # one QP route per transfer
