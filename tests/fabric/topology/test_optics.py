"""Optics under both conventions against hand counts (network.md §1.4 and the issue's review): 2 per fibre link,
and switch-side modules with breakout; the reach that decides copper."""
import pytest

from hyperdecode.fabric import roft, zcube
from hyperdecode.fabric.topology.cost import network_cost
from hyperdecode.fabric.topology.graph import COPPER
from hyperdecode.fabric.topology.optics import link_media, optics_counts
from hyperdecode.fabric.topology.report import zcube_for


@pytest.mark.parametrize("build, per_link, modules, copper", [
    (lambda: zcube(32), 4096, 1536, 1024),  # 12.8T: 400G modules of 2 x 200G; block links copper (4 servers)
    (lambda: roft(1024, 32, tiers=3), 6144, 5120, 0),  # every 400G port its own module
    (lambda: zcube_for(1024, 256), 6144, 1024, 0),  # 51.2T blog form: 4,096 fibre ports / 4 per 800G module
    (lambda: roft(1024, 128), 4096, 1536, 0),  # 3,072 ports / 2 per 800G module
])
def test_both_conventions_by_hand(build, per_link, modules, copper):
    counts = optics_counts(build())
    assert (counts["per_link"], counts["switch_modules"], counts["copper_links"]) == (per_link, modules, copper)


def test_reach_decides_copper():
    t = zcube(32)  # a block switch's 32 GPUs sit on 4 servers
    assert (link_media(t, 4) == COPPER).sum() == 1024 and (link_media(t, 3) == COPPER).sum() == 0
    assert optics_counts(t, reach_servers=0)["per_link"] == 6144
    assert network_cost(t, reach_servers=0)["total"] > network_cost(t)["total"]  # optics cost more than DACs
