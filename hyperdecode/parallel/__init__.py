"""Parallel plans: the multi-GPU decode latency model (latency.py)."""
