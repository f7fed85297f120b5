"""PD-disaggregated serving coupled to a flow-level network: max-min fair QPs (network.py), routes (routing.py),
traces and the model profile, the serving objects and their typed result, and the run's summary."""
from .config import SimConfig, calibrated
from .model import DecodePlan, ModelProfile
from .network import FlowNetwork
from .result import ServingRun
from .routing import Router
from .serving import simulate
from .summary import summarize
from .workload import Workload, load_trace, synthetic, trace_path

__all__ = ["SimConfig", "calibrated", "DecodePlan", "ModelProfile", "FlowNetwork", "ServingRun", "Router",
           "simulate", "summarize", "Workload", "load_trace", "synthetic", "trace_path"]
