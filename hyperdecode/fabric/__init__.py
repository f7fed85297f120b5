"""The cluster network: topology builders (ZCube, ROFT, leaf–spine), a property verifier and a cost model."""
from .builders import fattree, roft, zcube
from .cost import DEFAULT_PRICES, load_prices, network_cost
from .topology import COPPER, FIBER, Topology
from .verify import all_pairs, bisection, diameter, failure_impact, path_table

__all__ = ["Topology", "COPPER", "FIBER", "zcube", "roft", "fattree", "all_pairs", "diameter", "path_table",
           "bisection", "failure_impact", "network_cost", "load_prices", "DEFAULT_PRICES"]
