"""The cluster network: topology builders (ZCube, ROFT, leaf–spine), a property verifier, cost and optics
(`topology/`); PD serving coupled to a max-min flow network (`flow/`); a packet-train PFC model (`packet/`); all
on one event core (`events.py`).

>>> from hyperdecode.fabric import zcube
>>> zcube(4).num_switches
8
"""
from .topology import (COPPER, DEFAULT_PRICES, FIBER, Topology, all_pairs, bisection, diameter, failure_impact,
                       fattree, load_prices, network_cost, optics_counts, path_table, roft, zcube)

__all__ = ["Topology", "COPPER", "FIBER", "zcube", "roft", "fattree", "all_pairs", "diameter", "path_table",
           "bisection", "failure_impact", "network_cost", "load_prices", "DEFAULT_PRICES", "optics_counts"]
