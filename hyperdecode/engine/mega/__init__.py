"""The megakernel path: a decode step compiled to a static instruction list (`program`), run by a Python VM
(`vm`, the oracle). The persistent Triton kernel that runs the same list is not built yet."""
