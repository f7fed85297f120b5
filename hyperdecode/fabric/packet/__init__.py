"""The packet-train model of lossless Ethernet (PFC, ECN + DCQCN) on the fabric's event core, its known-answer
cases, hot-window replays of serving runs and the optional ns-3 cross-check of the flow model."""
from .pfc import Net, PacketFlow, PfcConfig, PfcResult, maxmin_rates, simulate

__all__ = ["Net", "PacketFlow", "PfcConfig", "PfcResult", "maxmin_rates", "simulate"]
