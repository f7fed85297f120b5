"""Topologies: the arrays (graph.py), the builders (ZCube, ROFT, leaf-spine), the property verifier, cost and optics,
one-call summaries and drawings."""
from .builders import fattree, roft, zcube
from .cost import DEFAULT_PRICES, load_prices, network_cost
from .graph import COPPER, FIBER, Topology
from .optics import optics_counts
from .verify import all_pairs, bisection, diameter, failure_impact, path_table

__all__ = ["Topology", "COPPER", "FIBER", "zcube", "roft", "fattree", "all_pairs", "diameter", "path_table",
           "bisection", "failure_impact", "network_cost", "load_prices", "DEFAULT_PRICES", "optics_counts"]
