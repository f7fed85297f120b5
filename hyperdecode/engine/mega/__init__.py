"""The megakernel path: a decode step compiled to a static instruction list (`program` for the Llama family,
`program_mla` for GLM-5 / DeepSeek), run by a Python VM (`vm`, the oracle) or by one persistent Triton kernel
(`kernel`, Llama opcodes so far)."""
