"""The megakernel path: a decode step compiled to a static instruction list (`program`), run by a Python VM
(`vm`, the oracle) or by one persistent Triton kernel (`kernel`). Llama family only so far."""
